"""Search spaces keyed by dotted training-config paths: validation and conversion to Ray Tune."""
from __future__ import annotations

import difflib
from typing import Any

from ..config.base import apply_overrides, field_paths, parse_config
from ..config.train import TrainConfig
from ..errors import ConfigError
from .config import ParamSpec

__all__ = ["validate_space_paths", "to_tune_space", "apply_trial", "trial_label"]

# Paths under these prefixes take free-form keys (validated by the model builder instead).
_OPEN_PREFIXES = ("model.head.", "model.extra.")


def validate_space_paths(space: dict[str, ParamSpec], source: str) -> None:
    """Every key must be a leaf path of :class:`TrainConfig`; errors list the closest valid paths."""
    valid = field_paths(TrainConfig)
    errors = []
    for path in space:
        if path in valid or path.startswith(_OPEN_PREFIXES):
            continue
        close = difflib.get_close_matches(path, valid, n=3, cutoff=0.5)
        hint = f"; close valid paths: {', '.join(close)}" if close else ""
        errors.append(f"{source}: space.{path}: unknown training-config path{hint}")
    if errors:
        raise ConfigError(errors)


def to_tune_space(space: dict[str, ParamSpec], search: str) -> dict[str, Any]:
    """Ray Tune domains for each path (``grid`` turns ``choice`` into a grid search)."""
    from ray import tune

    out: dict[str, Any] = {}
    for path, spec in space.items():
        kind = spec.kind
        if kind == "uniform":
            out[path] = tune.uniform(*spec.uniform)
        elif kind == "loguniform":
            out[path] = tune.loguniform(*spec.loguniform)
        elif kind == "int":
            out[path] = tune.randint(spec.int[0], spec.int[1] + 1)  # inclusive upper bound
        elif kind == "choice":
            out[path] = tune.grid_search(spec.choice) if search == "grid" else tune.choice(spec.choice)
        else:
            out[path] = spec.fixed
    return out


def apply_trial(base: dict, overrides: list[str], values: dict[str, Any], source: str) -> TrainConfig:
    """The base config dict with the sweep's overrides and one trial's values, validated."""
    data = apply_overrides(base, overrides)
    sets = [f"{k}={_yaml_scalar(v)}" for k, v in values.items()]
    return parse_config(TrainConfig, data, source, sets)


def _yaml_scalar(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def trial_label(values: dict[str, Any], space: dict[str, ParamSpec]) -> str:
    """Readable run name from the searched values, e.g. ``alpha=12.3,beta=2.71,cache=20``."""
    parts = []
    for path, spec in space.items():
        if spec.kind == "fixed" or path not in values:
            continue
        v = values[path]
        text = f"{v:.3g}" if isinstance(v, float) else str(v)
        parts.append(f"{path.rsplit('.', 1)[-1]}={text}")
    return ",".join(parts) or "trial"
