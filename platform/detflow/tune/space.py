"""Search spaces keyed by dotted training-config paths: validation and conversion to Ray Tune."""
from __future__ import annotations

import difflib
from typing import Any

from ..config.base import field_paths
from ..config.compose import Layer, compose, set_layers
from ..config.train import TrainConfig
from ..errors import ConfigError
from .config import ParamSpec

__all__ = ["validate_space_paths", "space_model_names", "allowed_paths", "to_tune_space", "apply_trial", "trial_label"]


def allowed_paths(model_name: str) -> list[str]:
    """Every dotted leaf path a search space may name for ``model_name``: its family's model fields
    (``model.assigner.tal_topk`` for YOLOv6, ``model.assigner.soft_center_alpha`` for RTMDet …) and
    the other TrainConfig sections."""
    from ..config.train import model_config_class

    common = [p for p in field_paths(TrainConfig) if p != "model" and not p.startswith("model.")]
    return field_paths(model_config_class(model_name), "model.") + common


def space_model_names(space: dict[str, ParamSpec], base_model: str) -> list[str]:
    """The models a sweep trains: the values a ``model.name`` dimension takes, else the base's."""
    spec = space.get("model.name")
    if spec is None:
        return [base_model]
    names = spec.choice if spec.kind == "choice" else [spec.fixed] if spec.kind == "fixed" else []
    return [str(n) for n in names] or [base_model]


def validate_space_paths(space: dict[str, ParamSpec], source: str, model_names: list[str]) -> None:
    """Every key must be a leaf path of the TrainConfig of each model in ``model_names`` (refused
    before anything runs); an error names the key, the family and the fields valid in its section."""
    import detmodels

    errors = []
    for name in dict.fromkeys(model_names):
        valid = allowed_paths(name)
        for path in space:
            if path not in valid:
                errors.append(f"{source}: space.{path}: {_not_a_field(path, name, detmodels.get_model_entry(name).family, valid)}")
    if errors:
        raise ConfigError(errors)


def _not_a_field(path: str, model: str, family: str, valid: list[str]) -> str:
    section = path.rsplit(".", 1)[0] + "." if "." in path else ""
    siblings = [p for p in valid if section and p.startswith(section) and "." not in p[len(section):]]
    close = difflib.get_close_matches(path, valid, n=3, cutoff=0.5)
    text = f"not a training-config field of {model} ({family})"
    if close:
        text += f"; did you mean {', '.join(close)}?"
    if siblings:
        text += f"; {family} fields of {section.rstrip('.')}: {', '.join(p[len(section):] for p in siblings)}"
    return text


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


def apply_trial(base: Layer | TrainConfig | dict, overrides: list[str], values: dict[str, Any],
                source: str) -> TrainConfig:
    """:func:`~detflow.config.compose.compose` of the base config, the sweep's ``--set`` overrides
    and one trial's values (a layer of dotted keys named ``source``, e.g. ``sweep s, trial 3``);
    the base and overrides are named after the base layer's source (``source`` for a bare base)."""
    base = base if isinstance(base, Layer) else Layer(base, source)
    return compose(TrainConfig, base, *set_layers(overrides, base.source), Layer(values, source))


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
