"""ONNX export of the deploy form: parity with torch, dynamic batch, NMS in the graph, fallback exporter."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from detflow.errors import UserInputError
from detflow.export import export_onnx, ort_session
from detmodels.ops import multiclass_nms

_spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)


@pytest.fixture(scope="module")
def model():
    return deploy.tiny_model()


def _torch_outputs(model, x):
    with torch.no_grad():
        return [t.numpy() for t in model.deploy_outputs(x)]


def test_onnx_matches_torch_with_dynamic_batch(model, tmp_path):
    result = export_onnx(model, tmp_path, input_size=64)
    assert result.max_abs_diff < 1e-4
    assert result.input_size == (64, 64) and result.exporter in ("dynamo", "torchscript")
    sess = ort_session(result.onnx_path)
    assert sess.get_inputs()[0].shape[1:] == [3, 64, 64] and not isinstance(sess.get_inputs()[0].shape[0], int)
    for batch in (1, 5):  # the graph was traced at batch 2
        x = torch.randn(batch, 3, 64, 64)
        boxes, scores = sess.run(None, {"images": x.numpy()})
        ref_boxes, ref_scores = _torch_outputs(model, x)  # the unfused original model
        assert boxes.shape == (batch, 64 + 16, 4) and scores.shape == (batch, 80, 4)
        np.testing.assert_allclose(boxes, ref_boxes, atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    info = json.loads(Path(result.sidecar).read_text())
    assert info["precision"] == "fp32" and info["input_size"] == [64, 64] and info["num_classes"] == 4
    assert info["input_spec"]["std"] == [255.0, 255.0, 255.0]
    assert isinstance(model.stem[0].norm, torch.nn.BatchNorm2d)  # the caller's model is not re-parameterised


def test_static_batch_export(model, tmp_path):
    result = export_onnx(model, tmp_path, input_size=(64, 96), dynamic_batch=False)
    dims = onnx.load(result.onnx_path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 96]
    assert result.max_abs_diff < 1e-4


def test_nms_in_graph_matches_torch_nms(model, tmp_path):
    result = export_onnx(model, tmp_path, input_size=64, with_nms=True, score_thr=0.5, nms_iou=0.5, max_det=30)
    assert result.with_nms and result.onnx_path.endswith("model_nms.onnx")
    sess = ort_session(result.onnx_path)
    assert [o.name for o in sess.get_outputs()] == ["num_dets", "det_boxes", "det_scores", "det_labels"]
    x = torch.randn(3, 3, 64, 64)
    num, boxes, scores, labels = sess.run(None, {"images": x.numpy()})
    assert boxes.shape == (3, 30, 4) and scores.shape == (3, 30) and labels.shape == (3, 30)
    ref_boxes, ref_scores = (torch.from_numpy(a) for a in _torch_outputs(model, x))
    for i in range(3):
        kb, ks, kl, _ = multiclass_nms(ref_boxes[i], ref_scores[i], 0.5, 0.5, 30)
        k = int(num[i])
        assert k == len(ks) and 0 < k <= 30
        np.testing.assert_allclose(scores[i, :k], ks.numpy(), atol=1e-5)
        np.testing.assert_allclose(boxes[i, :k], kb.numpy(), atol=1e-3)
        assert (labels[i, :k] == kl.numpy()).all()
        assert (labels[i, k:] == -1).all() and (scores[i, k:] == 0).all()


def test_torchscript_fallback(model, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo=False, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo exporter unavailable")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    result = export_onnx(model, tmp_path, input_size=64)
    assert result.exporter == "torchscript" and result.max_abs_diff < 1e-4


def test_bad_inputs(model, tmp_path):
    with pytest.raises(UserInputError, match="multiples of 16"):
        export_onnx(model, tmp_path, input_size=72)
    with pytest.raises(UserInputError, match="input_size is required"):
        export_onnx(model, tmp_path)
    with pytest.raises(UserInputError, match="not a detflow checkpoint"):
        export_onnx(tmp_path, tmp_path / "out")
