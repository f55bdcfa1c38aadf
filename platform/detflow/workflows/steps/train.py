"""``train`` and ``distill``: compose the step's TrainConfig and run ``detflow.train.run_training``.

The config is one :func:`~detflow.config.compose.compose`: a base (``config:`` file, ``config_from:``
a sweep/NAS best config, or for ``distill`` the teacher's own config) ← workflow ``defaults`` ← the
step's ``with`` sections ← the step's run settings (name, experiment, storage, ``init``, ``distill``),
validated once. The run is named after the step and Ray Train stores it under the step's storage
(``<step>/runs/``, local or object storage), so a retried or resumed step continues its own latest
checkpoint (Ray Train driver recovery) on whichever node it runs.
"""
from __future__ import annotations

from typing import Any

from ... import artifact_store
from ...config.base import read_yaml
from ...config.compose import Layer, compose
from ...config.train import TrainConfig
from ..context import StepContext
from ..schema import DistillParams, TrainParams
from . import checkpoint_config, section_layers

__all__ = ["run_train", "run_distill", "build_train_config", "base_layer"]


def base_layer(params: Any, ctx: StepContext) -> Layer:
    """The step's base config: its ``config:`` file (``kind: train``), an upstream sweep/NAS step's
    ``best_config``, a distill step's teacher's config, or nothing."""
    if params.config:
        from ...config.kinds import read_user_config

        return Layer(read_user_config(params.config, "train"), params.config)
    if getattr(params, "config_from", None):
        return Layer(read_yaml(ctx.output(params.config_from, "best_config")) or {},
                     f"best config of step {params.config_from!r}")
    if getattr(params, "teacher", None):
        return Layer(checkpoint_config(ctx.output(params.teacher, "checkpoint")), f"config of teacher {params.teacher!r}")
    return Layer({}, f"step {ctx.step_id!r}")


def _run_settings(params: TrainParams | DistillParams, ctx: StepContext) -> dict:
    """What the step itself decides: the run's name, experiment, storage, start weights, teacher,
    RepOpt scales."""
    settings: dict[str, Any] = {"name": ctx.step_id, "experiment": ctx.workflow, "storage": ctx.uri("runs"),
                                "distill": None}
    if params.init:
        settings["model.pretrained"] = ctx.output(params.init, "checkpoint")
    if getattr(params, "repopt_scales", None):  # RepOpt: the hyper-search step's scales
        settings["train.optimizer.name"] = "repopt"
        settings["train.optimizer.repopt_scales"] = ctx.output(params.repopt_scales, "checkpoint")
    if isinstance(params, DistillParams):
        settings["distill"] = {"teacher": ctx.output(params.teacher, "checkpoint"), "weight": params.weight,
                               "temperature": params.temperature, "decay": params.decay, "feature": params.feature}
    return settings


def build_train_config(params: TrainParams | DistillParams, ctx: StepContext) -> TrainConfig:
    """The TrainConfig this step trains (see module docstring)."""
    return compose(TrainConfig, base_layer(params, ctx), *section_layers(params, ctx),
                   Layer(_run_settings(params, ctx), f"step {ctx.step_id!r}"))


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
