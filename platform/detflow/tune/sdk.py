"""``detflow.sweep``: launch a sweep from Python.

>>> import detflow
>>> result = detflow.sweep(  # doctest: +SKIP
...     base="workflows/configs/rtmdet_tiny_synth.yaml",
...     space={"model.assigner.soft_center_alpha": {"uniform": [5, 20]},
...            "recipe.mosaic.max_cached_images": {"int": [10, 40]}},
...     metric="val/bbox_mAP50", mode="max", num_samples=8, max_concurrent=2,
...     scheduler={"name": "asha", "grace_period": 1}, name="alpha-cache")
>>> result.best_values, result.best_config_path, result.parent_run_id  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ..config.base import parse_config
from ..paths import state_dir
from .config import SweepConfig
from .results import SweepResult
from .runner import find_sweep, run_sweep

__all__ = ["sweep"]


def sweep(
    base: str | Path | dict | BaseModel | None = None,
    space: dict[str, Any] | None = None,
    *,
    metric: str = "val/bbox_mAP",
    mode: str = "max",
    num_samples: int = 8,
    max_concurrent: int = 2,
    scheduler: dict | str | None = "asha",
    search: dict | str | None = "tpe",
    name: str,
    resume: bool = False,
    **extra: Any,
) -> SweepResult:
    """Run (or, with ``resume=True``, continue) a sweep; see :class:`SweepConfig` for the fields.

    ``base`` is a training-config YAML path, a dict or a ``TrainConfig``; ``space`` maps dotted
    config paths to ``{"uniform": [lo, hi]}``, ``{"loguniform": …}``, ``{"int": …}``,
    ``{"choice": [...]}`` or a fixed value. ``extra`` takes the other SweepConfig fields
    (``resources``, ``max_retries``, ``overrides``, ``storage``).
    """
    if resume and base is None:
        cfg, config_dir = find_sweep(name)
        return run_sweep(cfg, config_dir=config_dir, resume=True)
    base_path = _base_path(base, name)
    data = {
        "name": name, "base": str(base_path), "metric": metric, "mode": mode, "space": space or {},
        "num_samples": num_samples, "max_concurrent": max_concurrent,
        "scheduler": {"name": scheduler} if isinstance(scheduler, str) else (scheduler or {"name": "none"}),
        "search": {"name": search} if isinstance(search, str) else (search or {}), **extra,
    }
    cfg = parse_config(SweepConfig, data, f"detflow.sweep(name={name!r})")
    return run_sweep(cfg, config_dir=Path.cwd(), resume=resume)


def _base_path(base: str | Path | dict | BaseModel | None, name: str) -> Path:
    if base is None:
        raise ValueError("detflow.sweep: base= (a training config path, dict or TrainConfig) is required")
    if isinstance(base, (str, Path)):
        return Path(base).resolve()
    from .results import _absolute_paths

    data = base.model_dump(mode="json") if isinstance(base, BaseModel) else dict(base)
    data = _absolute_paths(data, Path.cwd())  # relative dataset paths are taken from the caller's cwd
    path = state_dir() / "sweeps" / f"{name}.base.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
