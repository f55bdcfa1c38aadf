"""detflow train/predict without Ray: config resolution, CLI errors, predict from a checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detflow.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=6, image_size=64, seed=1, val_fraction=0.34)


def _write_config(path: Path, synth, **extra) -> Path:
    import yaml

    rel = lambda p: str(Path(p).relative_to(path.parent)) if Path(p).is_relative_to(path.parent) else str(p)  # noqa: E731
    cfg = {"kind": "train", "name": "cli", "model": {"name": "rtmdet_tiny"},
           "data": {"train": {"annotations": rel(synth.train_json), "images": rel(synth.images_dir)},
                    "image_size": 64},
           "train": {"epochs": 1, "batch_size": 2}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_resolve_train_config_makes_paths_absolute_and_counts_classes(synth, tmp_path, monkeypatch):
    from detflow.config import TrainConfig, load_config
    from detflow.train import resolve_train_config

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    cfg_path = _write_config(Path(synth.train_json).parent / "train.yaml", synth)
    cfg = resolve_train_config(load_config(TrainConfig, cfg_path), cfg_path.parent)
    assert cfg.data.train.annotations == str(Path(synth.train_json).resolve())
    assert cfg.model.num_classes == 4
    assert cfg.storage == str((tmp_path / "home" / "runs").resolve())


def test_train_resume_without_previous_run_exits_2(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    cfg_path = _write_config(tmp_path / "t.yaml", synth)
    assert main(["train", str(cfg_path), "--resume"]) == 2
    assert "no run of 'cli' to resume" in capsys.readouterr().err


def test_latest_run_picks_newest_run_of_exactly_that_name(tmp_path):
    from detflow.train.runner import RUN_MARKER, _latest_run, _new_run_name

    for name in ("exp-20260101-000000", "exp-20260102-000000", "exp-20260102-000000-2", "exp-tiny-20270101-000000",
                 "exp-20260103-000000"):
        (tmp_path / name).mkdir()
        if name != "exp-20260103-000000":  # no marker: never resumed
            (tmp_path / name / RUN_MARKER).write_text(json.dumps({"run_id": name}))
    assert _latest_run(str(tmp_path), "exp") == ("exp-20260102-000000-2", {"run_id": "exp-20260102-000000-2"})
    assert _latest_run(str(tmp_path), "nothing") is None
    first = _new_run_name(str(tmp_path), "exp")  # created exclusively, with a random suffix
    second = _new_run_name(str(tmp_path), "exp")
    assert first != second and (tmp_path / first).is_dir() and (tmp_path / second).is_dir()


def test_train_bad_override_exits_2(synth, tmp_path, capsys):
    cfg_path = _write_config(tmp_path / "t.yaml", synth)
    assert main(["train", str(cfg_path), "--set", "train.epochs=zero"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def _fake_checkpoint(synth, tmp_path) -> Path:
    import detmodels
    from detflow.config import TrainConfig, parse_config
    from detflow.engine.checkpoint import save_checkpoint
    from detflow.engine.ema import ExpMomentumEMA

    cfg = parse_config(TrainConfig, {"model": {"name": "rtmdet_tiny", "num_classes": 4},
                                     "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                                              "image_size": 64}})
    torch.manual_seed(0)
    model = detmodels.create_model("rtmdet_tiny", num_classes=4)
    ema = ExpMomentumEMA(model)
    meta = {"model": "rtmdet_tiny", "num_classes": 4, "category_ids": [1, 2, 3, 4],
            "class_names": ["a", "b", "c", "d"], "epoch": 0, "metrics": {}, "image_size": 64}
    return save_checkpoint(tmp_path / "ckpt", state={"model": model.state_dict(), "ema": ema.state_dict(), "epoch": 0},
                           config=cfg, meta=meta)


def test_load_checkpoint_model_uses_ema_weights(synth, tmp_path):
    from detflow.engine.checkpoint import load_checkpoint_model, load_checkpoint_state, save_checkpoint

    ckpt = _fake_checkpoint(synth, tmp_path)
    state = load_checkpoint_state(ckpt)
    key = next(k for k, v in state["model"].items() if v.dtype.is_floating_point and v.ndim == 4)
    state["ema"]["module"][key] = state["ema"]["module"][key] + 1.0
    from detflow.engine.checkpoint import read_config, read_meta

    save_checkpoint(ckpt, state=state, config=read_config(ckpt), meta=read_meta(ckpt))
    model, cfg, meta = load_checkpoint_model(ckpt)
    assert not model.training and meta["num_classes"] == 4 and cfg.model.name == "rtmdet_tiny"
    assert torch.allclose(model.state_dict()[key], state["model"][key] + 1.0)


def test_predict_cli_on_images_dir_writes_results_and_drawings(synth, tmp_path, capsys):
    ckpt = _fake_checkpoint(synth, tmp_path)
    out, draw = tmp_path / "preds.json", tmp_path / "draw"
    code = main(["predict", str(ckpt), "--images", str(synth.images_dir), "--out", str(out), "--draw", str(draw),
                 "--score-thr", "0.0"])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    n_images = len(list(Path(synth.images_dir).glob("*.jpg")))
    assert len(list(draw.glob("*.png"))) == n_images
    assert results and {"image_id", "category_id", "bbox", "score", "file_name"} <= set(results[0])
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4}


def test_predict_cli_needs_images_or_annotations(synth, tmp_path, capsys):
    ckpt = _fake_checkpoint(synth, tmp_path)
    assert main(["predict", str(ckpt), "--out", str(tmp_path / "p.json")]) == 2
    assert main(["predict", str(tmp_path), "--images", str(synth.images_dir), "--out", str(tmp_path / "p.json")]) == 2
    assert "not a model artifact" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model_name,recipe", [("rtmdet_tiny", "rtmdet"), ("rtmdet_ins_tiny", "rtmdet"),
                                               ("yolov6_n", "yolov6"), ("spinenet_49s", "retinanet")])
def test_worker_components_train_and_evaluate_each_family(synth, model_name, recipe):
    """The worker's data/model/loop wiring without Ray: 2 steps, finite loss, COCO eval runs."""
    import math

    from detflow.config import TrainConfig, parse_config
    from detflow.engine.loop import evaluate_model, primary_metric
    from detflow.train.data import build_train_data
    from detflow.train.worker import _build_loop, build_model

    split = {"annotations": str(synth.train_json), "images": str(synth.images_dir)}
    cfg = parse_config(TrainConfig, {
        "model": {"name": model_name, "num_classes": 4}, "recipe": {"name": recipe},
        "data": {"train": split, "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)},
                 "image_size": 64, "filter_empty": False},
        "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2}})
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    data = build_train_data(cfg, model.input_spec)
    loop = _build_loop(cfg, model, data.recipe, data.steps_per_epoch, 1, torch.device("cpu"), None, progress=False)
    stats = loop.train_epoch(data.train_loader(0), 0).summary()
    assert math.isfinite(stats["train/loss"]) and loop.step == 2
    metrics = evaluate_model(loop.eval_model(), data.val_loader(), data.val.coco, data.category_ids)
    assert primary_metric(data.task) in metrics


def test_bench_train_table_and_worker_list_parsing():
    from detflow.bench.train_bench import TrainBenchResult, TrainBenchRow
    from detflow.cli.bench import _int_list
    from detflow.errors import UserInputError

    assert _int_list("1,2") == [1, 2]
    with pytest.raises(UserInputError, match="--workers"):
        _int_list("1,x")
    res = TrainBenchResult("rtmdet_tiny", 128, 4, 8, [
        TrainBenchRow("bare torch", 1, 8.0, 4.0),
        TrainBenchRow("independent processes (no DDP)", 2, 15.6, 4.1, scaling_efficiency=0.975),
        TrainBenchRow("bare torch DDP", 2, 15.2, 4.2, scaling_efficiency=0.95, efficiency_range=(0.95, 0.95)),
        TrainBenchRow("detflow", 1, 7.5, 4.3, overhead_pct=7.5, scaling_efficiency=1.0),
        TrainBenchRow("detflow", 2, 12.0, 5.3, scaling_efficiency=0.8, efficiency_range=(0.75, 0.85))], repeats=3)
    table = res.to_markdown()
    assert "3 repetition(s)" in table
    assert "| bare torch DDP | 2 | 15.20 | 4.20 |  | 95 % | 1.90× |" in table
    assert "| independent processes (no DDP) | 2 | 15.60 | 4.10 |  | 98 % | 1.95× |" in table
    assert "| detflow | 1 | 7.50 | 4.30 | +7.5 % | 100 % | 1.00× |" in table
    assert "| detflow | 2 | 12.00 | 5.30 |  | 80 % (75–85) | 1.60× |" in table


def test_bench_train_scaling_rows_per_repetition():
    from detflow.bench.train_bench import _scaling_rows

    # two repetitions; epoch seconds for 1 and 2 workers (steps per worker fixed: eff = t1 / t2)
    rows = _scaling_rows("detflow", [{1: 10.0, 2: 10.5}, {1: 12.0, 2: 15.0}], per_epoch_images=80)
    two = rows[1]
    assert two.workers == 2 and two.scaling_efficiency == pytest.approx((10 / 10.5 + 12 / 15) / 2)
    assert two.efficiency_range == pytest.approx((0.8, 10 / 10.5))
    assert two.images_per_s == pytest.approx(2 * 80 / 12.75)
    ddp = _scaling_rows("bare torch DDP", [{2: 5.0}], per_epoch_images=80, base_epoch=4.5)
    assert ddp[0].scaling_efficiency == pytest.approx(0.9)


def test_bare_ddp_runs_the_worker_loop_in_two_gloo_processes(tmp_path):
    """The machine's own DDP ceiling row of ``detflow bench train``: two spawned processes, a real
    gloo process group, the worker's loop and data (no Ray)."""
    from detflow.bench.train_bench import _bench_config, bare_ddp_epoch_times
    from detflow.data import generate_synthetic

    data = generate_synthetic(tmp_path / "d", num_images=16, image_size=64, seed=0, val_fraction=0.0)
    cfg = _bench_config("rtmdet_tiny", 64, 2, 2, 2, data, str(tmp_path / "runs"))
    times = bare_ddp_epoch_times(cfg, 2, world=2)
    assert len(times) == 2 and all(0 < t < 300 for t in times)


def test_independent_processes_row_trains_without_gradient_exchange(tmp_path):
    """The compute-ceiling row: the same two processes, started together, but not DDP-wrapped —
    the ranks' weights drift apart, while DDP keeps them identical."""
    from detflow.bench.train_bench import _bench_config, spawn_loops
    from detflow.data import generate_synthetic

    data = generate_synthetic(tmp_path / "d", num_images=16, image_size=64, seed=0, val_fraction=0.0)
    cfg = _bench_config("rtmdet_tiny", 64, 2, 2, 2, data, str(tmp_path / "runs"))
    synced = spawn_loops(cfg, 2, 2, sync=True)
    free = spawn_loops(cfg, 2, 2, sync=False)
    assert synced[0][1] == pytest.approx(synced[1][1], rel=1e-6)
    assert free[0][1] != pytest.approx(free[1][1], rel=1e-6)
    assert all(len(times) == 2 and all(t > 0 for t in times) for times, _ in free.values())


