"""``export``: ONNX (fp32) of an upstream checkpoint's deploy form, checked in ONNX Runtime."""
from __future__ import annotations

from ..context import StepContext
from ..schema import ExportParams


def run(params: ExportParams, ctx: StepContext) -> dict:
    from ...export import export_onnx

    result = export_onnx(str(ctx.local(params.checkpoint, "checkpoint")), ctx.path / "onnx", input_size=params.input_size,
                         dynamic_batch=params.dynamic_batch, with_nms=params.with_nms)
    return {"onnx": result.onnx_path, "precision": "fp32", "input_size": list(result.input_size),
            "metrics": {"max_abs_diff": float(result.max_abs_diff)}}
