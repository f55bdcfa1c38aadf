"""``sweep`` (Ray Tune + Optuna over a training config) and ``nas`` (SpineNet search) steps.

Both compose the step's training config (:func:`~detflow.workflows.steps.train.base_layer` ←
workflow ``defaults`` ← the step's ``with`` sections, validated once), write it to ``base.yaml`` in
the step's scratch and hand it to the search as its base; the search's own directory (Tune
experiment, Optuna study) lives in the scratch and is stored with the step's outputs, and a retried
or resumed step restores it first; the output ``best_config`` is a full training YAML a ``train``
step takes with ``config_from: STEP``. The search fields of a step are those of the search's own
YAML (:class:`~detflow.tune.config.SweepSearch`, :class:`~detflow.archsearch.config.NasObjective`) and pass
through as is.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ...config.compose import Layer, compose
from ...config.train import TrainConfig
from ..context import StepContext
from ..schema import NASParams, SweepParams
from . import section_layers

__all__ = ["run_sweep", "run_nas", "search_name", "step_base_config"]


def step_base_config(params: SweepParams | NASParams, ctx: StepContext) -> TrainConfig:
    """The step's training config: its ``config:`` file ← ``defaults`` ← ``with`` sections, named
    after the step unless the file names it."""
    from .train import base_layer

    return compose(TrainConfig, Layer({"name": ctx.step_id}, f"step {ctx.step_id!r}"), base_layer(params, ctx),
                   *section_layers(params, ctx))


def _write_config(cfg: TrainConfig, path: Path) -> Path:
    """``cfg`` as a training YAML (the values set, ``kind: train`` first)."""
    data = {"kind": "train", **cfg.model_dump(mode="json", exclude_unset=True)}
    from ...atomic import atomic_write

    atomic_write(path, yaml.safe_dump(data, sort_keys=False))
    return path


def _restore(ctx: StepContext, name: str) -> bool:
    """Copy the search directory ``name`` an earlier attempt stored into the scratch; True if there was one."""
    from ... import artifact_store

    stored = ctx.uri(name)
    if not artifact_store.is_dir(stored) or not artifact_store.list_dir(stored):
        return False
    artifact_store.download(stored, ctx.path / name)
    return True


def search_name(ctx: StepContext) -> str:
    """Name of the step's search — its Optuna study, Tune experiment / NAS directory and MLflow parent
    run: ``<run_id>.<step_id>``, so that runs sharing ``search.storage`` (one Optuna database) keep
    their studies apart, while a retried or resumed step (same run id) continues its own."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", f"{ctx.run_id}.{ctx.step_id}")
    return name if name[0].isalnum() else f"r{name}"


def _shared(params: Any, section: type) -> dict:
    """The step's values of the fields it shares with the search config class ``section``."""
    return {name: getattr(params, name) for name in section.model_fields}


def run_sweep(params: SweepParams, ctx: StepContext) -> dict:
    from ...tune.config import SweepConfig, SweepSearch
    from ...tune.runner import run_sweep as sweep

    base = _write_config(step_base_config(params, ctx), ctx.path / "base.yaml")
    resume = _restore(ctx, "sweeps")
    cfg = SweepConfig(**_shared(params, SweepSearch), name=search_name(ctx), base=str(base),
                      resources=params.trial_resources, storage=str(ctx.path / "sweeps"))
    result = sweep(cfg, config_dir=ctx.path, resume=resume)
    return {"best_config": result.best_config_path, "best_values": result.best_values,
            "metrics": {"best": result.best_metric} if result.best_metric is not None else {},
            "sweep_run_id": result.parent_run_id}


def run_nas(params: NASParams, ctx: StepContext) -> dict:
    from ...archsearch import NasConfig, run_nas as nas
    from ...archsearch.config import NasObjective
    from ...archsearch.transfer import full_scale_spec
    from ...errors import RuntimeFailure

    base_cfg = step_base_config(params, ctx)
    base = _write_config(base_cfg, ctx.path / "base.yaml")
    resume = _restore(ctx, "nas")
    cfg = NasConfig(**_shared(params, NasObjective), name=search_name(ctx), base=str(base),
                    storage=str(ctx.path / "nas"))
    result = nas(cfg, config_dir=ctx.path, resume=resume)
    if not result.best_spec_path:
        raise RuntimeFailure(f"step {ctx.step_id!r}: the search produced no architecture to train: {result.message}")
    spec = full_scale_spec(result.best_spec_path, base_cfg.model.model_dump(mode="json"), ctx.path / "best_spec.yaml")
    # ``spec`` is read by the generic ``spinenet`` builder, not by a named variant's; the config names
    # the spec's stored location (the scratch copy is gone once the step ends)
    best = compose(TrainConfig, Layer(base_cfg, f"step {ctx.step_id!r}"),
                   Layer({"model": {"name": "spinenet", "spec": ctx.uri(spec.name)}}, f"step {ctx.step_id!r} (best spec)"))
    best_path = _write_config(best, ctx.path / "best_config.yaml")
    metric = result.best["metric"] if result.best else None
    return {"best_config": str(best_path), "spec": str(spec), "proxy_spec": result.best.get("spec"),
            "metrics": {"best": metric} if isinstance(metric, (int, float)) else {}, "nas_run_id": result.parent_run_id}
