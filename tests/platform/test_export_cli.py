"""``detflow export``: fp32 ONNX and int8 (PTQ) exports of a real checkpoint checked in ONNX Runtime,
sources by path / models:/ / RUN_ID/STEP, and one-line exit-2 errors that leave nothing at --out."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from detflow.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=6, image_size=64, seed=1, val_fraction=0.34)


@pytest.fixture(scope="module")
def ckpt(synth, tmp_path_factory) -> Path:
    """An (untrained) rtmdet_tiny checkpoint at 64 px, as training writes it (model.pt, config.yaml, meta.json)."""
    import detmodels
    from detflow.config import TrainConfig, parse_config
    from detflow.engine.checkpoint import save_checkpoint

    cfg = parse_config(TrainConfig, {"model": {"name": "rtmdet_tiny", "num_classes": 4},
                                     "data": {"train": {"annotations": str(synth.train_json),
                                                        "images": str(synth.images_dir)}, "image_size": 64}})
    torch.manual_seed(0)
    model = detmodels.create_model("rtmdet_tiny", num_classes=4)
    meta = {"model": "rtmdet_tiny", "num_classes": 4, "category_ids": [1, 2, 3, 4],
            "class_names": ["a", "b", "c", "d"], "epoch": 0, "metrics": {}, "image_size": 64}
    return Path(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", state={"model": model.state_dict(), "epoch": 0},
                                config=cfg, meta=meta))


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DETFLOW_STATE_URL", raising=False)


def _torch_outputs(ckpt: Path, x: torch.Tensor) -> list[np.ndarray]:
    from detflow.engine.checkpoint import load_checkpoint_model

    model = load_checkpoint_model(ckpt)[0].eval()
    with torch.no_grad():
        return [t.numpy() for t in model.deploy_outputs(x)]


def test_onnx_export_matches_torch(ckpt, tmp_path, capsys):
    from detflow.export import ort_session

    out = tmp_path / "onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--dynamic-batch", "1,2,4", "--out", str(out)]) == 0
    assert str(out / "model.onnx") in capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "onnx" and manifest["precision"] == "fp32" and manifest["dynamic_batch"] == [1, 2, 4]
    assert manifest["input_size"] == [64, 64] and manifest["checkpoint"] == str(ckpt) and manifest["max_abs_diff"] < 1e-4
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["precision"] == "fp32" and sidecar["num_classes"] == 4 and sidecar["category_ids"] == [1, 2, 3, 4]
    sess = ort_session(out / "model.onnx")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        got = sess.run(None, {"images": x.numpy()})
        for g, ref in zip(got, _torch_outputs(ckpt, x)):  # the unfused model from the checkpoint
            assert g.shape == ref.shape
            np.testing.assert_allclose(g, ref, atol=1e-3, rtol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_int8_export_is_a_qdq_graph_ort_runs(ckpt, synth, tmp_path, capsys):
    from detflow.export import ort_session

    out = tmp_path / "int8"
    code = main(["export", str(ckpt), "--format", "int8", "--calib", str(synth.train_json), "--calib-batches", "1",
                 "--out", str(out), "--json"])
    assert code == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == json.loads((out / "export.json").read_text())
    assert manifest["precision"] == "int8" and manifest["file"] == "model.int8.onnx"
    assert manifest["calib"]["images"] == str(Path(synth.images_dir).resolve()) and manifest["calib_images"] >= 1
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert json.loads((out / "model.int8.json").read_text())["precision"] == "int8"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["quantization"]["method"] == "ptq" and ".tmp-" not in json.dumps(meta)  # paths name the final dir
    boxes, scores = ort_session(out / "model.int8.onnx").run(None, {"images": np.zeros((2, 3, 64, 64), np.float32)})
    assert boxes.shape[0] == scores.shape[0] == 2 and scores.shape[-1] == 4 and np.isfinite(scores).all()


def test_models_uri_and_step_sources_resolve_to_the_checkpoint(ckpt, tmp_path, capsys):
    from detflow import tracking
    from detflow.cli.export import resolve_source
    from detflow.workflows.state import StateStore

    with tracking.start_run("export-cli-test") as active:
        run = tracking.Run(active.info.run_id)
        for f in ("model.pt", "config.yaml", "meta.json"):
            run.log_artifact(ckpt / f, "model")
        version = run.register_model("export_cli_model", "model", alias="champion")
    by_alias = resolve_source("models:/export_cli_model@champion", None)
    assert (by_alias / "model.pt").read_bytes() == (ckpt / "model.pt").read_bytes()
    out = tmp_path / "from-registry"
    assert main(["export", f"models:/export_cli_model/{version}", "--format", "onnx", "--out", str(out)]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"] == f"models:/export_cli_model/{version}" and manifest["dynamic_batch"] is None
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 64]  # no --dynamic-batch: a fixed batch of 1

    url = f"sqlite:///{tmp_path / 'wf.db'}"
    store = StateStore(url)
    store.create_run("wf-1", "wf", {}, [("train", "train")])
    store.update_step("wf-1", "train", status="succeeded", outputs={"checkpoint": str(ckpt)})
    assert resolve_source("wf-1/train", url) == ckpt
    capsys.readouterr()
    assert main(["export", "wf-1/evaluate", "--format", "onnx", "--out", str(tmp_path / "x"), "--state-url", url]) == 2
    err = capsys.readouterr().err
    assert "'wf-1/evaluate'" in err and "has no step 'evaluate'" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, needle", [
    (["{missing}", "--format", "onnx"], "{missing}"),
    (["{synth}", "--format", "onnx"], "not a detflow checkpoint"),
    (["{ckpt}", "--format", "tflite"], "--format 'tflite'"),
    (["{ckpt}", "--format", "onnx", "--dynamic-batch", "4,2,8"], "--dynamic-batch '4,2,8'"),
    (["{ckpt}", "--format", "onnx", "--dynamic-batch", "a,b,c"], "--dynamic-batch 'a,b,c'"),
    (["{ckpt}", "--format", "int8"], "--calib: required"),
    (["{ckpt}", "--format", "int8", "--calib", "{missing}.json"], "--calib '{missing}.json': no such file"),
    (["{ckpt}", "--format", "onnx", "--precision", "fp8"], "--precision 'fp8'"),
    (["models:/no_such_model/3", "--format", "onnx"], "models:/no_such_model/3"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, needle, ckpt, synth, tmp_path, capsys):
    values = {"missing": str(tmp_path / "missing"), "synth": str(Path(synth.train_json).parent), "ckpt": str(ckpt)}
    out = tmp_path / "out"
    assert main(["export", *(a.format(**values) for a in args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle.format(**values) in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_exits_2(ckpt, tmp_path, capsys):
    out = tmp_path / "engine"
    assert main(["export", str(ckpt), "--format", "engine", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT is not installed" in err and not out.exists()


def test_out_is_written_whole_or_not_at_all(ckpt, tmp_path, monkeypatch, capsys):
    import detflow.export as export_pkg

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # a directory that is not an earlier export is never replaced
        assert main(["export", str(ckpt), "--format", "onnx", "--out", str(other), *extra]) == 2
        assert repr(str(other)) in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]

    def failing_export(checkpoint, out_dir, **kw):
        (Path(out_dir) / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export_pkg, "export_onnx", failing_export)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="exporter crashed"):
        main(["export", str(ckpt), "--format", "onnx", "--out", str(out)])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
