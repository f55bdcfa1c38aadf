"""``evaluate``: COCO mAP of an upstream checkpoint or exported model (``detflow.bench.evaluate_artifact``)."""
from __future__ import annotations

from ...errors import UserInputError
from ..context import StepContext
from ..schema import EvaluateParams
from . import checkpoint_config, split_of


def _val_split(params: EvaluateParams, ctx: StepContext, checkpoint: str | None):
    split = split_of(ctx, params.data, "val")
    if split is None and checkpoint:
        from ...config.train import DatasetSplit

        val = (checkpoint_config(checkpoint).get("data") or {}).get("val")
        split = DatasetSplit(**val) if val else None
    if split is None:
        raise UserInputError(f"step {ctx.step_id!r}: no val split to evaluate on; set `with: {{data: …}}`")
    return split


def run(params: EvaluateParams, ctx: StepContext) -> dict:
    from ...bench import evaluate_artifact

    outputs = ctx.inputs.get(params.artifact, {})
    checkpoint = outputs.get("checkpoint")
    path = ctx.local(params.artifact, "checkpoint", "onnx")
    backend = params.backend or ("torch" if checkpoint and not outputs.get("onnx") else "onnxruntime")
    metrics = evaluate_artifact(path, _val_split(params, ctx, checkpoint), input_size=params.input_size,
                                backend=backend, work_dir=ctx.path)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"metrics": numbers, "per_class": metrics.get("per_class"), "backend": backend}
