"""RTMDet-Ins keeps its masks through ONNX export, int8 (PTQ) and the benchmark (issue 24 point 4).

The exported graph adds ``mask_kernels`` and ``mask_feat``; ``detmodels.dense_instance_postprocess``
(the step ``RTMDetIns.postprocess`` runs too) turns them into masks in original pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import detmodels
from detflow.bench import BenchArtifact, evaluate_artifact, run_benchmark
from detflow.config.train import DatasetSplit
from detflow.data import generate_synthetic
from detflow.export import export_onnx, ort_session

SIZE = 64
NUM_CLASSES = 4  # generate_synthetic's default classes
IMAGE_SIZES = [(50, 64), (64, 40)]  # letterboxed: the masks must come back in these original sizes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return detmodels.create_model("rtmdet_ins_tiny", num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ins_export")
    export_onnx(model, out, input_size=SIZE)
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    paths = generate_synthetic(tmp_path_factory.mktemp("ins_synth"), num_images=6, image_size=SIZE, val_fraction=0.34)
    return (DatasetSplit(annotations=str(paths.train_json), images=str(paths.images_dir)),
            DatasetSplit(annotations=str(paths.val_json), images=str(paths.images_dir)))


def _images(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _ort_detections(onnx_path, x) -> list[detmodels.Detections]:
    outs = ort_session(onnx_path).run(None, {"images": x.numpy()})
    return detmodels.dense_instance_postprocess(*(torch.from_numpy(o) for o in outs), (SIZE, SIZE), IMAGE_SIZES,
                                                score_thr=0.0, max_det=30)


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-9)


def mask_ious(ref: detmodels.Detections, got: detmodels.Detections) -> list[float]:
    """Mask IoU of each ``ref`` instance with the ``got`` instance of the same class and box (IoU > 0.95);
    empty-vs-empty counts 1. Unmatched instances (NMS ties at the top-k edge) are left out."""
    if len(ref.boxes) == 0 or len(got.boxes) == 0:
        return []
    ious = _box_iou(ref.boxes, got.boxes)
    ious[ref.labels[:, None] != got.labels[None]] = 0
    out = []
    for i in range(len(ref.boxes)):
        j = int(ious[i].argmax())
        if ious[i, j] < 0.95:
            continue
        a, b = ref.masks[i], got.masks[j]
        union = int((a | b).sum())
        out.append(1.0 if union == 0 else int((a & b).sum()) / union)
    return out


def test_instance_export_outputs_and_sidecar(export_dir):
    info = json.loads((export_dir / "model.json").read_text())
    assert info["outputs"] == ["boxes", "scores", "mask_kernels", "mask_feat"]
    assert info["task"] == "segm" and info["instance"]["strides"] == [8, 16, 32]
    shapes = {o.name: o.shape for o in ort_session(export_dir / "model.onnx").get_outputs()}
    assert shapes["mask_kernels"][1:] == [84, 169] and shapes["mask_feat"][1:] == [8, SIZE // 8, SIZE // 8]


def test_ort_masks_match_torch_postprocess(model, export_dir):
    x = _images()
    with torch.no_grad():
        ref = model.postprocess(model(x), IMAGE_SIZES, score_thr=0.0, max_det=30)
    got = _ort_detections(export_dir / "model.onnx", x)
    matched = 0
    for r, g, (h, w) in zip(ref, got, IMAGE_SIZES):
        assert tuple(g.masks.shape) == (len(g.boxes), h, w) and g.masks.dtype == torch.bool
        ious = mask_ious(r, g)
        matched += len(ious)
        assert ious and min(ious) > 0.9
    assert matched >= 0.8 * sum(len(r.boxes) for r in ref)


def test_int8_graph_yields_masks(model, tmp_path):
    from detflow.quant import run_ptq

    calib = [torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    result = run_ptq(model, tmp_path, data=calib, calib_batches=2)
    sidecar = json.loads(Path(result.onnx_path).with_suffix(".json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["outputs"][2:] == ["mask_kernels", "mask_feat"]
    assert result.metrics["qdq_nodes"]["QuantizeLinear"] > 0
    x = _images()
    outs = ort_session(result.onnx_path).run(None, {"images": x.numpy()})
    assert [o.shape for o in outs[2:]] == [(2, 84, 169), (2, 8, SIZE // 8, SIZE // 8)]
    dets = _ort_detections(result.onnx_path, x)
    for d, (h, w) in zip(dets, IMAGE_SIZES):
        assert len(d.boxes) > 0 and tuple(d.masks.shape) == (len(d.boxes), h, w)


def test_evaluate_export_reports_segm_metrics(model, export_dir, synth):
    _, val = synth
    onnx_m = evaluate_artifact(export_dir, val, backend="onnxruntime")
    torch_m = evaluate_artifact(model, val, input_size=SIZE, backend="torch")
    for m in (onnx_m, torch_m):
        assert {"segm_AP", "segm_AP50", "segm"} <= set(m) and 0.0 <= m["segm_AP50"] <= 1.0
        assert m["segm"]["num_predictions"] == m["num_predictions"] > 0
    assert onnx_m["segm_AP"] == pytest.approx(torch_m["segm_AP"], abs=1e-3)


def test_benchmark_table_has_segm_column(model, synth, tmp_path):
    _, val = synth
    table = run_benchmark([BenchArtifact("ins", model=model)], backends=["onnxruntime"], batch_sizes=[1],
                          val=val, input_size=SIZE, warmup=1, iters=2, work_dir=tmp_path)
    row = table.rows[0]
    assert row.status == "ok" and row.segm_mAP is not None and row.segm_mAP50 is not None
    assert "segm mAP50" in table.to_markdown() and "segm_mAP50" in table.to_csv().splitlines()[0]
    assert any(k.endswith("/segm_mAP50") for k in table.metrics())
