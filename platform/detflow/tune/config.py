"""Typed sweep configuration (``detflow sweep SWEEP.yaml``).

Example (``workflows/sweeps/rtmdet_tiny_sweep.yaml``)::

    kind: sweep
    name: rtmdet-tiny-dsl
    base: ../configs/rtmdet_tiny_synth.yaml
    metric: val/bbox_mAP50
    mode: max
    space:
      model.assigner.soft_center_alpha: {uniform: [5.0, 20.0]}
      model.assigner.soft_center_beta: {uniform: [1.0, 5.0]}
      recipe.mosaic.max_cached_images: {int: [10, 40]}
      model.neck.expand_ratio: {choice: [0.25, 0.5, 0.75]}
      train.epochs: 4                      # a fixed value
    search: {name: tpe, seed: 0}
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
    num_samples: 16
    max_concurrent: 2
"""
from __future__ import annotations

import builtins
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from ..config.base import StrictModel

__all__ = ["ParamSpec", "SearchConfig", "SchedulerConfig", "TrialResources", "SweepSearch", "SweepConfig"]


class ParamSpec(StrictModel):
    """One dimension of the search space: exactly one of ``uniform``, ``loguniform``, ``int``,
    ``choice`` (a bare scalar or list in YAML is a fixed value, see :func:`parse_space`)."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None
    choice: list[Any] | None = None
    fixed: Any = None

    @model_validator(mode="after")
    def _exactly_one(self):
        set_keys = [k for k in ("uniform", "loguniform", "int", "choice") if getattr(self, k) is not None]
        if len(set_keys) + (self.fixed is not None) != 1:
            raise ValueError("exactly one of uniform, loguniform, int, choice (or a fixed value)")
        for key in ("uniform", "loguniform", "int"):
            bounds = getattr(self, key)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{key}: low must be < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: bounds must be > 0")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: at least one value")
        return self

    @property
    def kind(self) -> str:
        for key in ("uniform", "loguniform", "int", "choice"):
            if getattr(self, key) is not None:
                return key
        return "fixed"


class SearchConfig(StrictModel):
    """Searcher: Optuna TPE (default) through Ray Tune's OptunaSearch, random, or grid."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    storage: str | None = Field(None, description="Optuna SQL storage URL; default SQLite under the sweep directory")


class SchedulerConfig(StrictModel):
    """Trial scheduler: ASHA (async successive halving) on the ``epoch`` counter, or none."""

    name: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1)
    max_epochs: PositiveInt | None = Field(None, description="default: the base config's train.epochs")


class TrialResources(StrictModel):
    """Resources of one trial's Ray Train job (overrides the base config's scaling)."""

    workers: PositiveInt = 1
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)


class SweepSearch(StrictModel):
    """What a sweep searches and how: the space, the objective, the searcher and the scheduler.

    Shared by :class:`SweepConfig` and the workflow ``sweep`` step (``detflow.workflows.schema``).
    ``space`` keys are dotted paths of the training config; a bare value (not a mapping) is fixed.
    """

    metric: str = "val/bbox_mAP"
    mode: Literal["max", "min"] = "max"
    space: dict[str, ParamSpec] = Field(min_length=1)
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    num_samples: PositiveInt = 8
    max_concurrent: PositiveInt = 2

    @model_validator(mode="before")
    @classmethod
    def _fixed_values(cls, data: Any) -> Any:
        """A bare value in ``space`` (not a mapping nor a ParamSpec) is a fixed value."""
        if isinstance(data, dict) and isinstance(data.get("space"), dict):
            data = dict(data)
            data["space"] = {
                k: (v if isinstance(v, (dict, ParamSpec)) else {"fixed": v}) for k, v in data["space"].items()
            }
        return data


class _SweepTarget(StrictModel):
    """The sweep's name and base training config (the leading fields of a sweep YAML)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base: str = Field(description="training config YAML (relative to this file)")
    overrides: list[str] = Field(default_factory=list, description="--set style overrides of the base")


class SweepConfig(SweepSearch, _SweepTarget):
    """A hyperparameter sweep over a base training config."""

    kind: Literal["sweep"] = Field("sweep", description="config kind: a sweep file starts with `kind: sweep`")
    resources: TrialResources = TrialResources()
    max_retries: int = Field(1, ge=0, description="retries of a crashed trial (same config)")
    storage: str = Field("", description="local dir or s3:// URI; default $DETFLOW_HOME/sweeps")
