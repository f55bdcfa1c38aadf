"""Append class-aware NMS to an exported ``(boxes, scores)`` graph, with fixed-size outputs.

The dense graph's outputs ``boxes N×A×4`` and ``scores N×A×C`` go through ONNX
``NonMaxSuppression`` (per image and class, like ``detmodels.ops.batched_nms``); the kept
(image, class, prior) triples are scattered into an ``N×(C·A)`` score map whose ``TopK`` gives
a fixed number of detections per image (the layout TensorRT's EfficientNMS plugin also produces):

* ``num_dets`` ``N`` int64 — valid rows per image,
* ``det_boxes`` ``N×K×4`` float — xyxy input pixels (zeros past ``num_dets``),
* ``det_scores`` ``N×K`` float — descending (zeros past ``num_dets``),
* ``det_labels`` ``N×K`` int64 — contiguous class index (−1 past ``num_dets``),

with ``K = min(max_det, C·A)``. ``A`` and ``C`` must be static (fixed input size); ``N`` may be symbolic.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..atomic import atomic_path
from ..errors import RuntimeFailure

__all__ = ["append_nms", "NMS_OUTPUTS"]

NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_labels")


def _static_dims(graph: onnx.GraphProto, name: str) -> list[int | None]:
    for value in graph.output:
        if value.name == name:
            return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    raise RuntimeFailure(f"graph has no output named {name!r}")


def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _nms_nodes(num_priors: int, num_classes: int, k: int) -> list[onnx.NodeProto]:
    """Nodes from (boxes, scores) + constants to the four fixed-size outputs (names prefixed ``nms/``)."""
    n = helper.make_node
    return [
        n("Transpose", ["scores"], ["nms/scores_t"], perm=[0, 2, 1]),  # N×C×A
        n("NonMaxSuppression", ["boxes", "nms/scores_t", "nms/max_out", "nms/iou", "nms/score_thr"],
          ["nms/selected"], center_point_box=0),  # K'×3 (image, class, prior)
        n("GatherND", ["nms/scores_t", "nms/selected"], ["nms/sel_scores"]),  # K'
        n("Gather", ["nms/selected", "nms/i0"], ["nms/sel_img"], axis=1),
        n("Gather", ["nms/selected", "nms/i1"], ["nms/sel_cls"], axis=1),
        n("Gather", ["nms/selected", "nms/i2"], ["nms/sel_prior"], axis=1),
        n("Mul", ["nms/sel_cls", "nms/num_priors"], ["nms/cls_off"]),
        n("Add", ["nms/cls_off", "nms/sel_prior"], ["nms/flat"]),
        n("Unsqueeze", ["nms/sel_img", "nms/ax1"], ["nms/img_col"]),
        n("Unsqueeze", ["nms/flat", "nms/ax1"], ["nms/flat_col"]),
        n("Concat", ["nms/img_col", "nms/flat_col"], ["nms/scatter_idx"], axis=1),  # K'×2
        n("Shape", ["scores"], ["nms/scores_shape"]),
        n("Slice", ["nms/scores_shape", "nms/s0", "nms/s1"], ["nms/batch"]),
        n("Concat", ["nms/batch", "nms/ca"], ["nms/dense_shape"], axis=0),
        n("ConstantOfShape", ["nms/dense_shape"], ["nms/zeros"],
          value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        n("ScatterND", ["nms/zeros", "nms/scatter_idx", "nms/sel_scores"], ["nms/dense"]),  # N×(C·A)
        n("TopK", ["nms/dense", "nms/k"], ["det_scores", "nms/top_idx"], axis=1, largest=1, sorted=1),
        n("Div", ["nms/top_idx", "nms/num_priors"], ["nms/top_cls"]),
        n("Mod", ["nms/top_idx", "nms/num_priors"], ["nms/top_prior"]),
        n("Unsqueeze", ["nms/top_prior", "nms/ax2"], ["nms/prior_idx"]),
        n("GatherND", ["boxes", "nms/prior_idx"], ["nms/top_boxes"], batch_dims=1),  # N×K×4
        n("Greater", ["det_scores", "nms/zero_f"], ["nms/valid"]),
        n("Cast", ["nms/valid"], ["nms/valid_i"], to=TensorProto.INT64),
        n("Cast", ["nms/valid"], ["nms/valid_f"], to=TensorProto.FLOAT),
        n("ReduceSum", ["nms/valid_i", "nms/ax1"], ["num_dets"], keepdims=0),
        n("Where", ["nms/valid", "nms/top_cls", "nms/minus_one"], ["det_labels"]),
        n("Unsqueeze", ["nms/valid_f", "nms/ax2"], ["nms/valid_f3"]),
        n("Mul", ["nms/top_boxes", "nms/valid_f3"], ["det_boxes"]),
    ]


def append_nms(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    iou_threshold: float = 0.65,
    score_threshold: float = 0.001,
    max_det: int = 100,
) -> str:
    """Write ``dst``: the graph ``src`` (outputs ``boxes``, ``scores``) followed by NMS (module docstring)."""
    model = onnx.load(str(src))
    graph = model.graph
    _, num_priors, _ = _static_dims(graph, "boxes")
    _, _, num_classes = _static_dims(graph, "scores")
    if not num_priors or not num_classes:
        raise RuntimeFailure("NMS in the graph needs a static number of priors and classes (fixed input size)")
    k = int(min(max_det, num_priors * num_classes))
    consts = [
        _const("nms/max_out", [max_det], np.int64), _const("nms/iou", [iou_threshold], np.float32),
        _const("nms/score_thr", [score_threshold], np.float32), _const("nms/i0", 0, np.int64),
        _const("nms/i1", 1, np.int64), _const("nms/i2", 2, np.int64),
        _const("nms/num_priors", num_priors, np.int64), _const("nms/ax1", [1], np.int64),
        _const("nms/ax2", [2], np.int64), _const("nms/s0", [0], np.int64), _const("nms/s1", [1], np.int64),
        _const("nms/ca", [num_priors * num_classes], np.int64), _const("nms/k", [k], np.int64),
        _const("nms/zero_f", 0.0, np.float32), _const("nms/minus_one", -1, np.int64),
    ]
    graph.initializer.extend(consts)
    graph.node.extend(_nms_nodes(num_priors, num_classes, k))
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    n_dim = batch.dim_param or batch.dim_value or "batch"
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("num_dets", TensorProto.INT64, [n_dim]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [n_dim, k, 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [n_dim, k]),
        helper.make_tensor_value_info("det_labels", TensorProto.INT64, [n_dim, k]),
    ])
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)
    if opset < 13:
        raise RuntimeFailure(f"NMS in the graph needs ONNX opset >= 13, the graph has {opset}")
    onnx.checker.check_model(model)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return str(dst)
