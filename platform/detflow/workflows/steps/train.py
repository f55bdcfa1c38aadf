"""``train`` and ``distill``: build the step's TrainConfig and run ``detflow.train.run_training``.

The config is layered: a base (``config:`` file, ``config_from:`` a sweep/NAS best config, or for
``distill`` the teacher's own config) ← workflow ``defaults`` ← the step's ``with`` sections. The
run is named after the step and Ray Train stores it under the step's storage (``<step>/runs/``,
local or object storage), so a retried or resumed step continues its own latest checkpoint
(Ray Train driver recovery) on whichever node it runs.
"""
from __future__ import annotations

from typing import Any

from ... import artifact_store
from ...config.base import parse_config, read_yaml
from ...config.train import TrainConfig
from ..context import StepContext
from ..schema import DistillParams, TrainParams
from . import checkpoint_config, deep_merge, section_overrides

__all__ = ["run_train", "run_distill", "build_train_config"]


def _base(params: Any, ctx: StepContext) -> dict:
    if params.config:
        return read_yaml(params.config) or {}
    if getattr(params, "config_from", None):
        return read_yaml(ctx.output(params.config_from, "best_config")) or {}
    if getattr(params, "teacher", None):
        return checkpoint_config(ctx.output(params.teacher, "checkpoint"))
    return {}


def build_train_config(params: TrainParams | DistillParams, ctx: StepContext) -> TrainConfig:
    """The TrainConfig this step trains (see module docstring)."""
    data = deep_merge(_base(params, ctx), section_overrides(params, ctx))
    data.update(name=ctx.step_id, experiment=ctx.workflow, storage=ctx.uri("runs"))
    data.pop("distill", None)
    if params.init:
        data.setdefault("model", {})["pretrained"] = ctx.output(params.init, "checkpoint")
    if isinstance(params, DistillParams):
        data["distill"] = {"teacher": ctx.output(params.teacher, "checkpoint"), "weight": params.weight,
                           "temperature": params.temperature, "decay": params.decay, "feature": params.feature}
    return parse_config(TrainConfig, data, f"step {ctx.step_id!r} (training config)")


def _has_run(storage: str, name: str) -> bool:
    """True when ``storage`` holds a run of ``name`` with its marker (what ``resume`` continues)."""
    return any(artifact_store.exists(artifact_store.join(storage, d, "detflow_run.json"))
               for d in artifact_store.list_dir(storage) if d.startswith(f"{name}-"))


def _train(params: Any, ctx: StepContext) -> dict:
    from ...train import run_training

    cfg = build_train_config(params, ctx)
    resume = _has_run(cfg.storage, cfg.name)
    result = run_training(cfg, resume=resume, parent_run_id=ctx.mlflow_run_id, tags=ctx.tags)
    config_path = artifact_store.join(result.checkpoint, "config.yaml")
    return {"checkpoint": result.checkpoint, "last_checkpoint": result.last_checkpoint,
            "config": config_path if artifact_store.exists(config_path) else None, "metrics": result.metrics,
            "training_run_id": result.run_id, "wall_time_s": result.wall_time_s, "resumed": resume}


def run_train(params: TrainParams, ctx: StepContext) -> dict:
    return _train(params, ctx)


def run_distill(params: DistillParams, ctx: StepContext) -> dict:
    return _train(params, ctx)
