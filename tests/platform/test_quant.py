"""Int8 quantisation (torchao PT2E → QDQ ONNX): PTQ, 1-epoch QAT, float skip layers, ORT fallback."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from detflow.errors import UserInputError
from detflow.export import ort_session
from detflow.quant import resolve_skip_layers, run_ptq, run_qat

_spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)


def _int8_weight_convs(path) -> tuple[int, int]:
    """(convs whose weight comes from a DequantizeLinear, all convs)."""
    graph = onnx.load(str(path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return sum(producers.get(n.input[1]) == "DequantizeLinear" for n in convs), len(convs)


def _ort_fused_ops(path, tmp_path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops: dict[str, int] = {}
    for node in onnx.load(opts.optimized_model_filepath).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def _assert_close_to_fp32(model, onnx_path, atol_score=0.05, atol_box=2.0):
    x = deploy.random_batches(1, 2, seed=7)[0][0]
    boxes, scores = ort_session(onnx_path).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = (t.numpy() for t in model.deploy_outputs(x))
    assert np.abs(scores - ref_scores).max() < atol_score
    assert np.abs(boxes - ref_boxes).mean() < atol_box


def test_ptq_gives_qdq_onnx_close_to_fp32(tmp_path):
    model = deploy.tiny_model()
    result = run_ptq(model, tmp_path, data=deploy.random_batches(), calib_batches=2, skip_layers=["cls.*"])
    m = result.metrics
    assert m["quant_path"] == "pt2e" and m["calib_batches"] == 2 and m["calib_images"] == 8
    assert m["qdq_nodes"]["QuantizeLinear"] > 0 and m["qdq_nodes"]["DequantizeLinear"] > 0
    int8_convs, convs = _int8_weight_convs(result.onnx_path)
    assert convs == 8 and int8_convs == 6  # the two cls convs stay float
    assert m["float_modules"] == ["cls.0", "cls.1"]
    # DQ→Conv→Q fused into int8 convs: the 4 backbone convs; the box prediction convs keep a float output
    assert _ort_fused_ops(result.onnx_path, tmp_path).get("QLinearConv") == 4
    assert m["ort_vs_torch_max_abs_diff"] < 0.5  # px; int8 requantisation rounds differently in ORT
    _assert_close_to_fp32(model, result.onnx_path)
    meta = json.loads((Path(result.checkpoint) / "meta.json").read_text())
    assert meta["quantization"]["method"] == "ptq"
    sidecar = json.loads(Path(result.onnx_path).with_suffix(".json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["input_size"] == [64, 64]


def test_qat_one_epoch(tmp_path):
    model = deploy.tiny_model()
    result = run_qat(model, tmp_path, data=deploy.random_batches(), epochs=1, lr=1e-4, quantizer="x86_inductor")
    m = result.metrics
    assert m["quant_path"] == "pt2e" and m["quantizer"] == "x86_inductor" and len(m["loss_history"]) == 1 and np.isfinite(m["final_loss"])
    int8_convs, convs = _int8_weight_convs(result.onnx_path)
    assert int8_convs == convs == 8
    sess = ort_session(result.onnx_path)
    assert sess.run(None, {"images": np.zeros((3, 3, 64, 64), np.float32)})[1].shape == (3, 80, 4)  # dynamic batch
    _assert_close_to_fp32(model, result.onnx_path)
    assert (Path(result.checkpoint) / "model.int8.pt2").is_file() == (m["torch_program"] is not None)


def test_ptq_falls_back_to_ort_quantize_static(tmp_path, monkeypatch):
    import detflow.quant.ptq as ptq

    def broken(*args, **kwargs):
        raise RuntimeError("PT2E unavailable")

    monkeypatch.setattr(ptq, "pt2e_ptq", broken)
    model = deploy.tiny_model()
    result = run_ptq(model, tmp_path, data=deploy.random_batches(), calib_batches=2)
    assert result.metrics["quant_path"] == "ort_quantize_static"
    assert "PT2E unavailable" in result.metrics["pt2e_error"]
    assert result.metrics["qdq_nodes"]["DequantizeLinear"] > 0
    _assert_close_to_fp32(model, result.onnx_path)


def test_resolve_skip_layers():
    model = deploy.tiny_model()
    assert resolve_skip_layers(model, ["stem", "stem.0", "box.1"]) == ["stem", "box.1"]
    model.dfl_proj = torch.nn.Conv2d(4, 1, 1)  # a DFL projection is always kept float
    assert resolve_skip_layers(model, []) == ["dfl_proj"]
    with pytest.raises(UserInputError, match="'neck.*' matches no module"):
        resolve_skip_layers(model, ["neck.*"])


def test_quant_needs_data_for_a_model_object(tmp_path):
    with pytest.raises(UserInputError, match="data is required"):
        run_ptq(deploy.tiny_model(), tmp_path)
