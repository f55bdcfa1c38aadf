"""Saved TensorRT engine directories on a machine without TensorRT or CUDA: the sidecar written by
the real writer from a real ONNX export, the compatibility check (same environment → accepted;
another GPU, compute capability or TensorRT → refused in one line naming both values), malformed
sidecars, and one-line exit-2 refusals from ``detflow predict`` / ``detflow val`` / the benchmark
row, plus registration as a model version with lineage on an embedded SQLite MLflow store.

The engine file in these directories is not a TensorRT plan: every check here happens before
TensorRT would deserialise it (the GPU-side build, reload and predict are in ``test_gpu.py``)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from detflow.cli import main
from detflow.errors import UserInputError
from detflow.export.engine_artifact import (
    ENGINE_FILE, SIDECAR_FILE, check_engine_compatible, engine_environment, engine_sidecar, load_engine,
    read_engine_sidecar, save_engine,
)

H100 = {"tensorrt": "10.3.0", "cuda": "12.4", "driver": "550.54.15", "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0"}
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=4, image_size=64, seed=1, val_fraction=0.25)


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """A real fp32 ONNX export (fixed batch, 64 px) of rtmdet_tiny with 3 classes, and its sidecar."""
    import detmodels
    from detflow.export import export_onnx

    model = detmodels.create_model("rtmdet_tiny", num_classes=3).eval()
    return Path(export_onnx(model, tmp_path_factory.mktemp("onnx"), input_size=64, dynamic_batch=False).onnx_path)


def _engine_dir(graph: Path, folder: Path, environment: dict = H100, **kw) -> Path:
    """An engine directory written by the real writer: sidecar of ``graph`` built in ``environment``,
    beside a blob that is not a TensorRT plan."""
    from detflow.export.onnx import read_sidecar

    info = engine_sidecar(graph, precision=kw.pop("precision", "fp16"), input_size=(64, 64), batch=(1, 2, 4),
                          workspace_bytes=1 << 28, environment=environment, onnx_info=read_sidecar(graph), **kw)
    return save_engine(folder, b"not a TensorRT plan", info)


def test_sidecar_records_the_build(graph, tmp_path):
    folder = _engine_dir(graph, tmp_path / "eng")
    assert sorted(p.name for p in folder.iterdir()) == [ENGINE_FILE, SIDECAR_FILE]
    info = read_engine_sidecar(folder)
    assert info == json.loads((folder / SIDECAR_FILE).read_text())
    assert info["precision"] == "fp16" and info["int8_method"] is None and info["workspace_bytes"] == 1 << 28
    assert info["profile"] == {"input": "images", "min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert info["environment"] == H100
    assert info["onnx"] == {"path": str(graph.resolve()), "sha256": hashlib.sha256(graph.read_bytes()).hexdigest()}
    assert info["num_classes"] == 3 and info["input_size"] == [64, 64] and info["input_spec"]
    assert info["detflow"] and info["built_at"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_int8_sidecar_keeps_its_method(graph, tmp_path):
    info = read_engine_sidecar(_engine_dir(graph, tmp_path / "eng", precision="int8", int8_method="entropy"))
    assert info["precision"] == "int8" and info["int8_method"] == "entropy"


def test_same_environment_is_accepted(graph, tmp_path):
    info = read_engine_sidecar(_engine_dir(graph, tmp_path / "eng"))
    assert check_engine_compatible(info, H100) is None
    # a patch release of TensorRT, another driver or CUDA runtime: same GPU and TensorRT major.minor
    assert check_engine_compatible(info, {**H100, "tensorrt": "10.3.1", "driver": "560.1", "cuda": "12.6"}) is None


def test_other_gpu_is_refused_naming_both(graph, tmp_path):
    info = read_engine_sidecar(_engine_dir(graph, tmp_path / "eng"))
    why = check_engine_compatible(info, {**H100, "gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"})
    assert why is not None and len(why.splitlines()) == 1
    assert "'NVIDIA H100 80GB HBM3'" in why and "'NVIDIA A100-SXM4-80GB'" in why and "9.0" in why and "8.0" in why
    same_name = check_engine_compatible(info, {**H100, "compute_capability": "8.9"})
    assert same_name is not None and "compute capability 8.9" in same_name


def test_other_tensorrt_is_refused_naming_both(graph, tmp_path):
    info = read_engine_sidecar(_engine_dir(graph, tmp_path / "eng"))
    why = check_engine_compatible(info, {**H100, "tensorrt": "10.4.0"})
    assert why is not None and "10.3.0" in why and "10.4.0" in why and "GPU" not in why
    assert check_engine_compatible(info, {**H100, "tensorrt": "8.6.1"}) is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_load_engine_here_refuses_in_one_line(graph, tmp_path):
    folder = _engine_dir(graph, tmp_path / "eng")
    here = engine_environment()
    assert here["gpu_name"] is None and here["tensorrt"] is None
    with pytest.raises(UserInputError) as err:
        load_engine(folder)
    text = str(err.value)
    assert len(text.splitlines()) == 1 and str(folder / SIDECAR_FILE) in text
    assert "NVIDIA H100 80GB HBM3" in text and "no CUDA GPU here" in text
    assert "TensorRT 10.3.0" in text and "TensorRT is not installed here" in text


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not a JSON engine sidecar"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("", "not a JSON engine sidecar"),
])
def test_sidecar_that_is_not_json_is_one_line(text, needle, graph, tmp_path):
    folder = _engine_dir(graph, tmp_path / "eng")
    (folder / SIDECAR_FILE).write_text(text)
    with pytest.raises(UserInputError) as err:
        read_engine_sidecar(folder)
    assert needle in str(err.value) and str(folder / SIDECAR_FILE) in str(err.value)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["profile"].pop("max"), "profile.max: missing"),
    (lambda d: d["environment"].pop("gpu_name"), "environment.gpu_name: missing"),
    (lambda d: d.update(workspace_bytes="big"), "workspace_bytes: expected int, got 'big'"),
    (lambda d: d.pop("onnx"), "onnx: missing"),
])
def test_sidecar_missing_fields_is_one_line(edit, needle, graph, tmp_path):
    folder = _engine_dir(graph, tmp_path / "eng")
    info = json.loads((folder / SIDECAR_FILE).read_text())
    edit(info)
    (folder / SIDECAR_FILE).write_text(json.dumps(info))
    with pytest.raises(UserInputError) as err:
        load_engine(folder, here=H100)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_missing_sidecar_and_incomplete_info(graph, tmp_path):
    folder = tmp_path / "eng"
    folder.mkdir()
    (folder / ENGINE_FILE).write_bytes(b"plan")
    with pytest.raises(UserInputError, match="missing engine sidecar"):
        load_engine(folder, here=H100)
    with pytest.raises(ValueError, match="environment.tensorrt: missing"):  # nothing written without the facts
        _engine_dir(graph, tmp_path / "none", environment={**H100, "tensorrt": None})
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
@pytest.mark.parametrize("extra", [[], ["--precision", "int8", "--int8", "entropy", "--calib", "{calib}"],
                                   ["--precision", "int8", "--calib", "{calib}", "--workspace", "256M"]])
def test_export_engine_here_exits_2_and_writes_nothing(extra, graph, synth, tmp_path, capsys):
    ckpt = _checkpoint(synth, tmp_path)
    out = tmp_path / "engine"
    args = [a.format(calib=synth.train_json) for a in extra]
    assert main(["export", str(ckpt), "--format", "engine", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT is not installed" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("args,needle", [
    (["--format", "engine", "--int8", "entropy"], "--int8 'entropy': only with --format engine --precision int8"),
    (["--format", "engine", "--precision", "int8", "--calib", "{calib}", "--int8", "minmax"],
     "--int8 'minmax': expected one of qdq | entropy"),
    (["--format", "engine", "--workspace", "12x"], "--workspace '12x': expected a size"),
    (["--format", "engine", "--workspace", "100"], "--workspace '100': expected a size of at least 1 MiB"),
    (["--format", "onnx", "--register", "tiny"], "--register 'tiny': only with --format engine"),
])
def test_engine_options_are_checked_first(args, needle, synth, tmp_path, capsys):
    ckpt = _checkpoint(synth, tmp_path)
    out = tmp_path / "out"
    assert main(["export", str(ckpt), *(a.format(calib=synth.train_json) for a in args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def _checkpoint(synth, tmp_path: Path) -> Path:
    """An untrained rtmdet_tiny checkpoint at 64 px (model.pt, config.yaml, meta.json)."""
    import detmodels
    import torch
    from detflow.config import TrainConfig, parse_config
    from detflow.engine.checkpoint import save_checkpoint

    cfg = parse_config(TrainConfig, {"model": {"name": "rtmdet_tiny", "num_classes": 4},
                                     "data": {"train": {"annotations": str(synth.train_json),
                                                        "images": str(synth.images_dir)}, "image_size": 64}})
    model = detmodels.create_model("rtmdet_tiny", num_classes=4)
    meta = {"model": "rtmdet_tiny", "num_classes": 4, "category_ids": [1, 2, 3, 4],
            "class_names": ["a", "b", "c", "d"], "epoch": 0, "metrics": {}, "image_size": 64}
    return Path(save_checkpoint(tmp_path / "ckpt", state={"model": model.state_dict(), "epoch": 0},
                                config=cfg, meta=meta))


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_predict_of_an_engine_for_another_gpu_exits_2(graph, synth, tmp_path, capsys):
    folder = _engine_dir(graph, tmp_path / "eng")
    out = tmp_path / "preds.json"
    for backend in ([], ["--backend", "tensorrt"]):  # the default backend means tensorrt for an engine
        assert main(["predict", str(folder), "--images", str(synth.images_dir), "--out", str(out), *backend]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "engine refused" in err and "NVIDIA H100 80GB HBM3" in err, err
    assert not out.exists()
    assert main(["predict", str(folder), "--images", str(synth.images_dir), "--out", str(out),
                 "--backend", "onnxruntime"]) == 2
    assert "runs on backend tensorrt only" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_val_and_benchmark_of_an_engine_for_another_gpu(graph, synth, tmp_path, capsys):
    from detflow.bench.matrix import run_benchmark

    folder = _engine_dir(graph, tmp_path / "eng")
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}}))
    assert main(["val", str(folder), "--data", str(data)]) == 2  # auto backend: tensorrt
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "engine refused" in err and "no CUDA GPU here" in err, err
    table = run_benchmark([str(folder)], backends=["tensorrt"], batch_sizes=[1], input_size=64, warmup=0, iters=1,
                          missing_backend="skip", work_dir=tmp_path / "work")
    assert [(r.status, r.precision) for r in table.rows] == [("not installed", "fp16")]  # the row is marked


def test_register_engine_version_with_lineage(graph, synth, tmp_path, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from detflow import tracking
    from detflow.predict.register import register_engine

    first = _engine_dir(graph, tmp_path / "a")
    second = _engine_dir(graph, tmp_path / "b", precision="int8", int8_method="entropy")
    uri = tracking.configure()
    v1 = register_engine(first, "tiny_trt", source=str(graph.parent), alias="champion")
    v2 = register_engine(second, "tiny_trt", source="models:/tiny_trt@champion")
    client = MlflowClient(uri)
    mv1, mv2 = client.get_model_version("tiny_trt", v1), client.get_model_version("tiny_trt", v2)
    assert "detflow.upstream_version" not in mv1.tags and mv1.tags["detflow.source"] == str(graph.parent)
    assert mv2.tags["detflow.upstream_version"] == f"tiny_trt/{v1}"
    assert mv2.tags["detflow.engine.precision"] == "int8" and mv2.tags["detflow.engine.int8_method"] == "entropy"
    assert mv2.tags["detflow.engine.gpu"] == H100["gpu_name"] and mv2.tags["detflow.engine.tensorrt"] == "10.3.0"
    model = client.get_logged_model(mv2.source.removeprefix("models:/"))
    assert model.model_type == "engine" and model.tags["detflow.model_type"] == "engine"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/tiny_trt/{v2}",
                                                     dst_path=str(tmp_path / "dl")))
    assert {ENGINE_FILE, SIDECAR_FILE, "MLmodel"} <= {p.name for p in local.iterdir()}
    mlmodel = (local / "MLmodel").read_text()
    assert "detflow.predict.pyfunc" in mlmodel and "tensorrt" in mlmodel
    assert read_engine_sidecar(local)["onnx"]["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    with pytest.raises(UserInputError, match="no such registered model version"):
        register_engine(second, "tiny_trt", source="models:/tiny_trt@nowhere")
    if not HAS_TRT:  # predict of the registered version: downloaded, then refused before TensorRT
        out = tmp_path / "preds.json"
        assert main(["predict", f"models:/tiny_trt/{v2}", "--images", str(synth.images_dir), "--out", str(out)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "engine refused" in errors[0] and "no CUDA GPU here" in errors[0], errors
