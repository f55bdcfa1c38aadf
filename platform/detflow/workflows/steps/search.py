"""``sweep`` (Ray Tune + Optuna over a training config) and ``nas`` (SpineNet search) steps.

Both write the step's layered training config to ``base.yaml`` in the step directory and hand it to
the search as its base; the output ``best_config`` is a full training YAML a ``train`` step takes
with ``config_from: STEP``.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..context import StepContext
from ..schema import NASParams, SweepParams
from . import deep_merge, section_overrides

__all__ = ["run_sweep", "run_nas"]


def _write_base(params, ctx: StepContext) -> Path:  # noqa: ANN001
    from ...config.base import read_yaml

    base = read_yaml(params.config) if params.config else {}
    data = deep_merge(base or {}, section_overrides(params, ctx))
    data.setdefault("name", ctx.step_id)
    path = ctx.path / "base.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_sweep(params: SweepParams, ctx: StepContext) -> dict:
    from ...tune import config as tune_config
    from ...tune.runner import run_sweep as sweep

    base = _write_base(params, ctx)
    cfg = tune_config.SweepConfig.model_validate({
        "name": ctx.step_id, "base": str(base), "metric": params.metric, "mode": params.mode, "space": params.space,
        "search": params.search.model_dump(), "scheduler": params.scheduler.model_dump(),
        "num_samples": params.num_samples, "max_concurrent": params.max_concurrent,
        "resources": params.trial_resources.model_dump(), "storage": str(ctx.path / "sweeps")})
    resume = (ctx.path / "sweeps").is_dir() and any((ctx.path / "sweeps").iterdir())
    result = sweep(cfg, config_dir=ctx.path, resume=resume)
    return {"best_config": result.best_config_path, "best_values": result.best_values,
            "metrics": {"best": result.best_metric} if result.best_metric is not None else {},
            "sweep_run_id": result.parent_run_id}


def run_nas(params: NASParams, ctx: StepContext) -> dict:
    from ...config.base import read_yaml
    from ...nas import NasConfig, run_nas as nas

    base = _write_base(params, ctx)
    cfg = NasConfig.model_validate({
        "name": ctx.step_id, "base": str(base), "metric": params.metric, "mode": params.mode,
        "num_samples": params.num_samples, "space": params.space.model_dump(), "proxy": params.proxy.model_dump(),
        "search": params.search.model_dump(), "storage": str(ctx.path / "nas")})
    resume = (ctx.path / "nas").is_dir() and any((ctx.path / "nas").iterdir())
    result = nas(cfg, config_dir=ctx.path, resume=resume)
    if not result.best_spec_path:
        from ...errors import RuntimeFailure

        raise RuntimeFailure(f"step {ctx.step_id!r}: the search produced no valid architecture")
    best = read_yaml(base) or {}
    best.setdefault("model", {})["spec"] = result.best_spec_path
    best_path = ctx.path / "best_config.yaml"
    best_path.write_text(yaml.safe_dump(best, sort_keys=False))
    top = result.ranked[0] if result.ranked else {}
    metric = top.get("metric") if isinstance(top, dict) else None
    return {"best_config": str(best_path), "spec": result.best_spec_path,
            "metrics": {"best": metric} if isinstance(metric, (int, float)) else {}, "nas_run_id": result.parent_run_id}
