"""Typed optimiser, LR-schedule and EMA specs: what :func:`build_optimizer`, :func:`build_schedule`
and :func:`build_ema` take, and what a recipe row (:mod:`detflow.engine.recipes`) holds.

Every field is required (keyword construction): the recipe tables state each paper's values in
full. ``spec.merged(cfg)`` applies the fields a user set in ``train.optimizer`` / ``train.schedule``
/ ``train.ema`` (validated once, by the pydantic config).

Example::

    spec = OptimizerSpec(name="sgd", lr=0.01, weight_decay=5e-4, momentum=0.937, nesterov=True,
                         base_batch=256, scale_lr_by_batch=True)
    spec.merged(OptimizerConfig(lr=0.02)).lr  # 0.02
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config.train import EMAConfig, EMAKind, OptimizerConfig, OptimizerName, ScheduleConfig, ScheduleName

__all__ = ["OptimizerSpec", "ScheduleSpec", "EMASpec"]


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """An optimiser: ``adamw`` (``momentum`` is β1), ``sgd`` or ``repopt`` (SGD with RepOpt gradient
    masks from the hyper-search checkpoint ``repopt_scales``, which the worker turns into masks:
    ``build_optimizer`` takes the masks, not the path); ``lr`` is for ``base_batch`` images when
    ``scale_lr_by_batch`` (linear scaling rule, lr · total_batch / base_batch)."""

    name: OptimizerName
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    base_batch: int
    scale_lr_by_batch: bool
    repopt_scales: str | None = None

    def merged(self, cfg: OptimizerConfig | None) -> OptimizerSpec:
        """This spec with the non-``None`` fields of ``train.optimizer`` applied."""
        return _merged(self, cfg)


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """A per-iteration LR schedule (see :mod:`detflow.engine.schedules`). Warm-up is
    max(``warmup_iters``, ``warmup_epochs`` × iterations per epoch), rising from ``warmup_start``·lr as
    progress^``warmup_power`` (1: linear; 4: the YOLOv3/ASFF burn-in); ``milestones`` (``step``):
    fractions of the run where the lr is multiplied by 0.1."""

    name: ScheduleName
    warmup_iters: int
    warmup_epochs: float
    min_lr_ratio: float
    flat_fraction: float
    milestones: tuple[float, ...] = ()
    warmup_start: float = 1e-5
    warmup_power: float = 1.0

    def merged(self, cfg: ScheduleConfig | None) -> ScheduleSpec:
        """This spec with the non-``None`` fields of ``train.schedule`` applied."""
        return _merged(self, cfg)


@dataclass(frozen=True, kw_only=True)
class EMASpec:
    """Weight EMA: ``exp_momentum`` (RTMDet ExpMomentumEMA: ``momentum``, ``gamma``) or ``ramped``
    (YOLOv6: ``decay`` · (1 − e^(−updates/``gamma``)))."""

    enabled: bool
    kind: EMAKind
    momentum: float = 0.0002
    decay: float = 0.9999
    gamma: float = 2000.0

    def merged(self, cfg: EMAConfig | None) -> EMASpec:
        """This spec with the non-``None`` fields of ``train.ema`` applied."""
        return _merged(self, cfg)


def _merged(spec: Any, cfg: Any) -> Any:
    """``spec`` with the config's non-``None`` fields (each config field is a spec field)."""
    if cfg is None:
        return spec
    return dataclasses.replace(spec, **cfg.model_dump(exclude_none=True))
