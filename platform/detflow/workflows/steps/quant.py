"""``qat`` and ``ptq``: int8 quantisation of an upstream checkpoint to a Q/DQ ONNX model."""
from __future__ import annotations

from ..context import StepContext
from ..schema import PTQParams, QATParams
from . import split_of

__all__ = ["run_qat", "run_ptq"]


def _outputs(result) -> dict:  # noqa: ANN001 — detflow.quant.QuantResult
    return {"onnx": result.onnx_path, "checkpoint": result.checkpoint, "metrics": _numbers(result.metrics),
            "precision": "int8"}


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


def run_qat(params: QATParams, ctx: StepContext) -> dict:
    from ...quant import run_qat as qat

    result = qat(str(ctx.local(params.checkpoint, "checkpoint")), ctx.path / "qat", epochs=params.epochs, lr=params.lr,
                 max_steps_per_epoch=params.max_steps_per_epoch, skip_layers=tuple(params.skip_layers),
                 data=split_of(ctx, params.data, "train"),
                 distill=params.distill.model_dump() if params.distill is not None else None)
    return _outputs(result)


def run_ptq(params: PTQParams, ctx: StepContext) -> dict:
    from ...quant import run_ptq as ptq

    result = ptq(str(ctx.local(params.checkpoint, "checkpoint")), ctx.path / "ptq", calib_batches=params.calib_batches,
                 data=split_of(ctx, params.data, "train"), keep_float=params.keep_float)
    return _outputs(result)
