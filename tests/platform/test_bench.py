"""Benchmark matrix: one row per cell, "not installed" backends, percentiles, mAP of the exact artifact."""
from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from detflow.bench import BenchArtifact, backend_status, evaluate_artifact, run_benchmark
from detflow.bench.matrix import latency_stats
from detflow.config.train import DatasetSplit
from detflow.data import generate_synthetic
from detflow.errors import RuntimeFailure, UserInputError
from detflow.export import export_onnx

_spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)

NO_TRT = backend_status("tensorrt") is not None


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    paths = generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=8, image_size=64, val_fraction=0.25)
    return (DatasetSplit(annotations=str(paths.train_json), images=str(paths.images_dir)),
            DatasetSplit(annotations=str(paths.val_json), images=str(paths.images_dir)))


def test_latency_stats_hand_computed():
    stats = latency_stats(np.arange(1.0, 101.0), batch_size=4)
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["throughput"] == pytest.approx(4 * 1000 / 50.5)


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_matrix_rows_not_installed_and_percentiles(synth, tmp_path):
    _, val = synth
    model = deploy.tiny_model()
    export_onnx(model, tmp_path / "export", input_size=64, with_nms=True, max_det=50)
    table = run_benchmark(
        [BenchArtifact("fp32", model=model), BenchArtifact("exported", str(tmp_path / "export"))],
        backends=["torch", "onnxruntime", "tensorrt"], batch_sizes=[1, 2], input_size=64, val=val,
        warmup=1, iters=5, missing_backend="skip", work_dir=tmp_path / "work",
    )
    assert len(table.rows) == 2 * 3 * 2
    cells = {(r.artifact, r.backend, r.batch_size): r for r in table.rows}
    for art in ("fp32", "exported"):
        for bs in (1, 2):
            trt = cells[(art, "tensorrt", bs)]
            assert trt.status == "not installed" and trt.p50_ms is None and trt.mAP is None
            assert trt.precision == "fp16"  # what TensorRT would build from an fp32 graph
    assert cells[("exported", "torch", 1)].status == "n/a"  # an ONNX file has no torch form
    ok = [r for r in table.rows if r.status == "ok"]
    assert len(ok) == 6
    for r in ok:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms and r.throughput > 0
        assert r.mAP is not None and 0 <= r.mAP50 <= 1
    # the same weights give the same mAP on torch and ORT (dense path) and with NMS inside the graph
    assert cells[("fp32", "torch", 1)].mAP == pytest.approx(cells[("fp32", "onnxruntime", 2)].mAP, abs=1e-6)
    assert cells[("exported", "onnxruntime", 1)].mAP == pytest.approx(cells[("fp32", "torch", 1)].mAP, abs=2e-3)
    assert "NMS in graph" in cells[("exported", "onnxruntime", 1)].note
    md = table.to_markdown()
    assert md.count("not installed") == 4 and "| artifact | precision | backend |" in md and "threads" in md
    rows = list(csv.DictReader(io.StringIO(table.to_csv(tmp_path / "b.csv"))))
    assert len(rows) == 12 and (tmp_path / "b.csv").read_text() == table.to_csv()
    assert table.protocol["threads"] == 1 and "onnxruntime" in table.protocol["versions"]
    assert "bench/fp32/onnxruntime/fp32/b2/p50_ms" in table.metrics()


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_missing_backend_fails_with_clear_message():
    with pytest.raises(RuntimeFailure, match=r"tensorrt.*missing_backend: skip"):
        run_benchmark([BenchArtifact("m", model=deploy.tiny_model())], backends=["onnxruntime", "tensorrt"], input_size=64)


def test_bad_options():
    art = [BenchArtifact("m", model=deploy.tiny_model())]
    with pytest.raises(UserInputError, match="unknown backend 'openvino'"):
        run_benchmark(art, backends=["openvino"], input_size=64)
    with pytest.raises(UserInputError, match="missing_backend"):
        run_benchmark(art, backends=["torch"], input_size=64, missing_backend="ignore")


def test_evaluate_artifact_matches_postprocess(synth, tmp_path):
    _, val = synth
    model = deploy.tiny_model()
    onnx_metrics = evaluate_artifact(model, val, input_size=64, backend="onnxruntime", work_dir=tmp_path)
    torch_metrics = evaluate_artifact(model, val, input_size=64, backend="torch")
    assert onnx_metrics["images"] == torch_metrics["images"] == 2
    assert onnx_metrics["AP"] == pytest.approx(torch_metrics["AP"], abs=1e-6)
    assert onnx_metrics["backend"] == "onnxruntime" and onnx_metrics["precision"] == "fp32"
    assert "segm_AP" not in onnx_metrics and "segm" not in torch_metrics  # detection-only: no mask metrics


def test_int8_artifact_benchmarks_on_torch_and_ort(synth, tmp_path):
    from detflow.quant import run_ptq

    train, val = synth
    quant = run_ptq(deploy.tiny_model(), tmp_path / "ptq", data=train, image_size=64, calib_batches=1, batch_size=4)
    table = run_benchmark([BenchArtifact("int8", quant.checkpoint)], backends=["torch", "onnxruntime"],
                          batch_sizes=[1], val=val, warmup=1, iters=3)
    assert [(r.backend, r.precision, r.status) for r in table.rows] == [("torch", "int8", "ok"), ("onnxruntime", "int8", "ok")]
    assert table.rows[0].mAP == pytest.approx(table.rows[1].mAP, abs=5e-3)
    assert all(r.segm_mAP is None and r.segm_mAP50 is None for r in table.rows)  # blank for detection-only


def test_checkpoint_artifact_uses_its_models_normalisation():
    """A checkpoint evaluated on the torch backend must be fed pixels normalised like its model
    (RTMDet: BGR mean/std), not the default /255 — regression: torch mAP was 0 while ORT's was right."""
    import detmodels
    from detflow.bench.backends import _model_input_spec

    spec = _model_input_spec({"model": "rtmdet_tiny", "num_classes": 3})
    expected = detmodels.create_model("rtmdet_tiny", num_classes=3).input_spec
    assert spec["channel_order"] == "BGR" == expected.channel_order
    assert tuple(spec["mean"]) == expected.mean and tuple(spec["std"]) == expected.std
