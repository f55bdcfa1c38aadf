"""Issue 21 point 5: ``train.patience`` early stopping, the confusion-matrix plot, ``detflow val``.

The fast tests check the confusion matrix on hand-built cases and the config/CLI refusals; the slow
ones train rtmdet_tiny at 64 px on a real local Ray (2 DDP workers, gloo) until early stopping ends
the run, then evaluate its checkpoint and its ONNX export with ``detflow val``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detflow.engine.loop import EarlyStopping
from detflow.evaluation.confusion import (box_iou_xywh, confusion_matrix, normalize_rows, write_confusion_plot)

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}]


def _gt() -> dict:
    """Two images: image 1 has a cat and a dog, image 2 a bird and a crowd region."""
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 20, 20], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "iscrowd": 1},
    ]
    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "annotations": anns, "categories": CATS}


def _det(image_id: int, cat: int, box: list[float], score: float = 0.9) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


def test_confusion_matrix_known_case():
    results = [
        _det(1, 1, [0, 0, 10, 9]),          # cat found as cat (IoU 0.9)
        _det(1, 1, [1, 0, 10, 10], 0.8),     # a second cat on the same box: the box is taken → FP cat
        _det(1, 5, [20, 20, 10, 10]),        # dog predicted as bird
        _det(2, 2, [60, 60, 30, 30]),        # far from the bird: FP dog
        _det(2, 1, [50, 50, 20, 20]),        # on the crowd region: ignored
        _det(2, 5, [0, 0, 20, 20], 0.1),     # below score_thr: not used → the bird is missed
    ]
    m = confusion_matrix(_gt(), results, [1, 2, 5], iou_thr=0.5, score_thr=0.25)
    expected = np.array([  # rows true cat, dog, bird, background; columns predicted the same
        [1, 0, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [1, 1, 0, 0],
    ])
    np.testing.assert_array_equal(m, expected)
    # the low-score bird counts once the threshold admits it
    m2 = confusion_matrix(_gt(), results, [1, 2, 5], score_thr=0.05)
    assert m2[2, 2] == 1 and m2[2, 3] == 0


def test_confusion_matching_prefers_highest_iou_and_normalises_rows():
    gt = {"images": [{"id": 1}], "categories": CATS[:2], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [2, 0, 10, 10]}]}
    # one detection overlaps both boxes; it belongs to the one with the higher IoU (the dog at x=2)
    det = _det(1, 2, [2, 0, 10, 10])
    m = confusion_matrix(gt, [det], [1, 2])
    np.testing.assert_array_equal(m, [[0, 0, 1], [0, 1, 0], [0, 0, 0]])
    n = normalize_rows(np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]]))
    np.testing.assert_allclose(n, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    assert box_iou_xywh([[0, 0, 10, 10]], [[5, 0, 10, 10]])[0, 0] == pytest.approx(50 / 150)


def test_confusion_refuses_unknown_category_and_writes_png(tmp_path):
    from detflow.errors import UserInputError

    with pytest.raises(UserInputError, match="category_id 9"):
        confusion_matrix(_gt(), [_det(1, 9, [0, 0, 5, 5])], [1, 2, 5])
    png = tmp_path / "plots" / "confusion_matrix.png"
    counts = write_confusion_plot(_gt(), [_det(1, 1, [0, 0, 10, 10])], [1, 2, 5], png)
    assert counts.sum() == 3 and counts[0, 0] == 1  # cat matched, dog and bird missed; the crowd ignored
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_counts_epochs_without_improvement_and_restores():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert [es.update(e, v) for e, v in enumerate([0.30, 0.305, 0.32, 0.325])] == [False, False, False, False]
    assert es.best_epoch == 2 and es.update(4, 0.31) is True and es.stopped_epoch == 4
    again = EarlyStopping(patience=2, min_delta=0.01)
    again.load_state_dict(EarlyStopping(patience=2, best=0.5, best_epoch=3).state_dict())
    assert again.update(4, 0.4) is False and again.update(5, 0.4) is True  # counted from the restored best


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_patience_without_val_is_exit_2(tmp_path, cli_env):
    cfg = _write(tmp_path / "cfg.yaml", {
        "kind": "train", "name": "nopatience", "model": {"name": "rtmdet_tiny"},
        "data": {"train": {"annotations": "train.json", "images": "images"}},
        "train": {"epochs": 3, "patience": 2}})
    proc = subprocess.run([sys.executable, "-m", "detflow", "train", str(cfg)], env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.patience" in lines[0] and "data.val" in lines[0] and "got 2" in lines[0]


def _val_cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detflow", "val", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_val_bad_artifact_and_config_are_exit_2(tmp_path, cli_env):
    data = _write(tmp_path / "data.yaml", {"val": {"annotations": "val.json", "images": "images"}})
    proc = _val_cli([str(tmp_path / "no-such-ckpt"), "--data", str(data)], cli_env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no-such-ckpt" in proc.stderr, proc.stderr
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"not a checkpoint")
    no_val = _write(tmp_path / "noval.yaml", {"train": {"annotations": "t.json", "images": "images"}})
    proc = _val_cli([str(tmp_path / "ckpt"), "--data", str(no_val)], cli_env)
    assert proc.returncode == 2 and "val: expected a val split" in proc.stderr, proc.stderr


def test_val_split_of_a_yolo_data_section_is_converted(tmp_path, monkeypatch):
    """``detflow val --data`` takes a YOLO data section too: its val split comes back as COCO, with
    the boxes of the original (converted once into the $DETFLOW_HOME cache)."""
    from detflow.cli.val import val_split
    from detflow.data import generate_synthetic
    from detflow.errors import ConfigError
    from detflow.data.formats import write_yolo

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    coco = generate_synthetic(tmp_path / "coco", num_images=8, image_size=64, seed=1, val_fraction=0.5)
    data_yaml = write_yolo({"val": (coco.val_json, coco.images_dir)}, tmp_path / "yolo")
    cfg = _write(tmp_path / "data.yaml", {"format": "yolo", "val": {"annotations": "yolo/data.yaml",
                                                                    "images": "yolo/images/val"}})
    split = val_split(cfg)
    assert Path(split.annotations).is_relative_to(tmp_path / "home") and Path(split.annotations) != data_yaml
    got, want = (json.loads(Path(f).read_text()) for f in (split.annotations, coco.val_json))
    assert len(got["images"]) == len(want["images"]) and len(got["annotations"]) == len(want["annotations"])
    bad = _write(tmp_path / "bad.yaml", {"format": "darknet", "val": {"annotations": "a", "images": "b"}})
    with pytest.raises(ConfigError, match=re.escape("bad.yaml: format: expected coco | yolo | voc, got 'darknet'")):
        val_split(bad)


# --------------------------------------------------------------------------- real training (slow)
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=24, image_size=64, seed=0,
                              val_fraction=0.25)


def _train_dict(synth, storage: Path, **train) -> dict:
    return {
        "kind": "train", "name": "patience", "model": {"name": "rtmdet_tiny"},
        "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                 "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}, "image_size": 64},
        "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 6}, "mixup": {"max_cached_images": 3}},
        # min_delta 0.5: no 0.5 mAP gain can happen in a few steps, so the metric stalls for sure
        "train": {"epochs": 6, "batch_size": 2, "max_steps_per_epoch": 2, "schedule": {"warmup_iters": 1},
                  "optimizer": {"scale_lr_by_batch": False}, "patience": 2, "min_delta": 0.5, **train},
        "scaling": {"workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep_last": 2},
        "storage": str(storage),
    }


@pytest.fixture(scope="module")
def stopped_run(ray_session, synth, tmp_path_factory):
    """One real training that early stopping ends at epoch 3 of 6 (captured stdout alongside)."""
    import contextlib
    import io

    from detflow.config import TrainConfig, parse_config
    from detflow.train import run_training

    tmp = tmp_path_factory.mktemp("patience")
    data = _train_dict(synth, tmp / "runs")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = run_training(parse_config(TrainConfig, data), progress=False)
    return result, out.getvalue(), _write(tmp / "train.yaml", data)


@pytest.mark.slow
def test_early_stop_ends_the_run_and_keeps_the_best_checkpoint(stopped_run):
    from detflow.engine import checkpoint as ck

    result, out, _ = stopped_run
    assert [h["epoch"] for h in result.history] == [0, 1, 2]  # 3 of 6 epochs
    assert result.early_stop["stopped_epoch"] == 2 and result.early_stop["best_epoch"] == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("early stop"))
    assert line.startswith("early stop at epoch 3: val/bbox_mAP did not improve for 2 epochs (best ")
    assert line.endswith(f"at epoch 1); best checkpoint kept: {result.checkpoint}")
    assert result.checkpoint.endswith("/best") and ck.is_checkpoint(result.checkpoint)
    assert ck.read_meta(result.checkpoint)["epoch"] == 0  # the best epoch's weights, not the last
    state = ck.load_checkpoint_state(result.last_checkpoint)
    assert state["epoch"] == 2 and state["early_stop"]["stopped_epoch"] == 2  # what a resume restores


@pytest.mark.slow
def test_early_stop_tags_and_confusion_plot_in_mlflow(stopped_run):
    from mlflow.tracking import MlflowClient

    from detflow import tracking

    result, _, _ = stopped_run
    tracking.configure()
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["detflow.early_stop_epoch"] == "3" and run.data.tags["detflow.early_stop_best_epoch"] == "1"
    assert run.data.params["train.patience"] == "2"
    plots = {Path(a.path).name for a in client.list_artifacts(result.run_id, "plots")}
    assert {"confusion_matrix.png", "pr_curve.png"} <= plots, plots


def _detecting_copy(checkpoint: str, synth, dst: Path) -> str:
    """``checkpoint`` with BatchNorm statistics re-estimated on the val images and the prediction convs
    randomised (box distances ≈ one stride): six training steps leave boxes of zero size, which no
    backend comparison could tell apart. The copy is a regular checkpoint directory (config + meta kept)."""
    import torch

    from detflow.data import CocoDataset, build_dataloader, build_val_transforms
    from detflow.engine import checkpoint as ck

    model, cfg, meta = ck.load_checkpoint_model(checkpoint)
    torch.manual_seed(0)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # cumulative average over the calibration batches
        bn.reset_running_stats()
    model.train()
    val = CocoDataset(synth.val_json, synth.images_dir, transforms=build_val_transforms(64, model.input_spec))
    with torch.no_grad():
        for images, _, _ in build_dataloader(val, 6, shuffle=False, num_workers=0):
            model(images)
    state = model.eval().state_dict()
    for key, value in state.items():
        if key.startswith(("bbox_head.rtm_reg", "bbox_head.rtm_cls")) and key.endswith("weight"):
            value.add_((0.3 if "cls" in key else 0.1) * torch.randn(value.shape))
        if key.startswith("bbox_head.rtm_reg") and key.endswith("bias"):
            value.fill_(1.0)
    return str(ck.save_checkpoint(dst, state={"model": state, "ema": None}, config=cfg, meta=meta))


def _pseudo_val(checkpoint: str, synth, tmp: Path) -> Path:
    """A data section whose val ground truth is the checkpoint's own torch detections (those of at
    least 2×2 px): torch then scores close to 1, and another backend only as high by finding the same
    boxes (on the synthetic labels an untrained model scores 0, and any two backends agree on 0)."""
    from detflow.predict import predict

    gt = json.loads(Path(synth.val_json).read_text())
    preds = predict(checkpoint, annotations=synth.val_json, images_dir=synth.images_dir)
    anns = []
    for img in gt["images"]:
        mine = sorted((p for p in preds if p["image_id"] == img["id"] and min(p["bbox"][2:]) >= 2),
                      key=lambda p: -p["score"])
        anns += [{"id": len(anns) + 1 + i, "image_id": img["id"], "category_id": p["category_id"], "bbox": p["bbox"],
                  "area": p["bbox"][2] * p["bbox"][3], "iscrowd": 0} for i, p in enumerate(mine)]
    assert len(anns) >= 6, "the checkpoint detected nothing to compare"
    (tmp / "pseudo_val.json").write_text(json.dumps({**gt, "annotations": anns}))
    return _write(tmp / "data.yaml", {"val": {"annotations": "pseudo_val.json", "images": str(synth.images_dir)}})


@pytest.mark.slow
def test_val_checkpoint_and_its_onnx_export_agree(stopped_run, synth, tmp_path, cli_env):
    from detflow.export import export_onnx

    result, _, train_yaml = stopped_run
    ckpt = _detecting_copy(result.checkpoint, synth, tmp_path / "ckpt")
    export_onnx(ckpt, tmp_path / "onnx", input_size=64)
    data = _pseudo_val(ckpt, synth, tmp_path)
    png = tmp_path / "cm.png"
    torch_run = _val_cli([ckpt, "--data", str(data), "--json", "--confusion", str(png)], cli_env)
    assert torch_run.returncode == 0, torch_run.stderr
    onnx_run = _val_cli([str(tmp_path / "onnx"), "--data", str(data), "--json", "--batch", "4"], cli_env)
    assert onnx_run.returncode == 0, onnx_run.stderr
    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (torch_run, onnx_run))
    assert a["backend"] == "torch" and b["backend"] == "onnxruntime" and a["images"] == b["images"] == 6
    assert a["AP50"] > 0.8, a  # its own detections: found again
    for key in ("AP", "AP50", "AR100"):
        assert abs(a[key] - b[key]) <= 0.02, (key, a[key], b[key])
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the training config works as --data too, and without --json the eval table is printed
    table = _val_cli([result.checkpoint, "--data", str(train_yaml)], cli_env)
    assert table.returncode == 0 and "AP50" in table.stdout and "per-class AP" in table.stdout, table.stdout


@pytest.mark.slow
def test_patience_counter_survives_a_worker_kill(ray_session, synth, tmp_path, monkeypatch):
    """Rank 0 is killed during epoch 3 (after epoch 2's checkpoint): the restarted workers restore the
    counter (best at epoch 1) and stop after epoch 3. A fresh counter would start over and stop at 5."""
    import os
    import signal
    import threading
    import time

    from detflow.config import TrainConfig, parse_config
    from detflow.train import run_training
    from detflow.train.worker import PID_DIR_ENV

    pid_dir, storage = tmp_path / "pids", tmp_path / "runs"
    monkeypatch.setenv(PID_DIR_ENV, str(pid_dir))
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            pids = list(pid_dir.glob("rank0-*")) if pid_dir.exists() else []
            snaps = list(storage.glob("patience-*/checkpoint_manager_snapshot.json"))
            if pids and any("epoch_0001" in p.read_text() for p in snaps):
                os.kill(int(pids[0].name.split("-")[1]), signal.SIGKILL)
                killed.append(1)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    data = _train_dict(synth, storage, max_steps_per_epoch=None)
    result = run_training(parse_config(TrainConfig, data), progress=False)
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert len(list(pid_dir.glob("rank0-*"))) >= 2, "no restarted worker group"
    assert result.early_stop["stopped_epoch"] == 2 and result.early_stop["best_epoch"] == 0
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
