"""Per-iteration learning-rate schedules: linear warm-up, then flat-cosine, cosine, step or constant.

* ``flat_cosine`` (RTMDet, Lyu et al. 2022 §3.3 / MMDetection config; YOLOv3-ASFF): warm-up from
  ``warmup_start``·lr over ``warmup_iters`` (linear, or progress⁴ for the ASFF burn-in); flat until ``flat_fraction`` of training; then cosine per
  iteration down to ``min_lr_ratio``·lr (RTMDet: flat until epoch 150 of 300, eta_min 0.05·lr).
* ``cosine`` (YOLOv6 v3.0 §3.4): lf(t) = 1 + (lrf − 1)(1 − cos(πt/T))/2 with lrf = ``min_lr_ratio``,
  after a linear warm-up from 0 over max(3 epochs, 1000 iterations).
* ``step`` (SpineNet-RetinaNet): ×``gamma`` at each fraction of training in ``milestones``.
* ``constant``: warm-up then flat.

The schedule is a pure function of the iteration (``factor(it)``); :class:`IterLRScheduler` applies it
to an optimizer's groups (``lr = initial_lr · factor``) and checkpoints only the iteration counter.
"""
from __future__ import annotations

import dataclasses
import math
import typing

import torch

from ..config.train import ScheduleName
from .specs import ScheduleSpec

__all__ = ["LRSchedule", "IterLRScheduler", "build_schedule", "SCHEDULE_NAMES"]

SCHEDULE_NAMES: tuple[str, ...] = typing.get_args(ScheduleName)


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """LR multiplier as a function of the global iteration ``it`` (0-based).

    Attributes:
        name: ``flat_cosine`` | ``cosine`` | ``step`` | ``constant``.
        total_iters: iterations of the whole training (epochs × iterations per epoch).
        warmup_iters: linear warm-up length (0 = none).
        warmup_start: factor at iteration 0 of the warm-up (RTMDet 1e-5, YOLOv6 0, SpineNet 0.0067).
        warmup_power: the warm-up rises as progress^power: 1 linear, 4 the YOLOv3 / ASFF burn-in.
        min_lr_ratio: final factor of the (flat-)cosine decay.
        flat_fraction: ``flat_cosine``: fraction of ``total_iters`` before the decay starts.
        milestones: ``step``: fractions of ``total_iters`` where the factor is multiplied by ``gamma``.
    """

    name: str
    total_iters: int
    warmup_iters: int = 0
    warmup_start: float = 1e-5
    warmup_power: float = 1.0
    min_lr_ratio: float = 0.05
    flat_fraction: float = 0.5
    milestones: tuple[float, ...] = (0.95, 0.98)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")

    def warmup(self, it: int) -> float:
        if self.warmup_iters <= 0 or it >= self.warmup_iters:
            return 1.0
        return self.warmup_start + (1.0 - self.warmup_start) * (it / self.warmup_iters) ** self.warmup_power

    def decay(self, it: int) -> float:
        total = max(self.total_iters, 1)
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            passed = sum(it >= m * total for m in self.milestones)
            return self.gamma**passed
        start = int(round(self.flat_fraction * total)) if self.name == "flat_cosine" else 0
        if it < start:
            return 1.0
        progress = min((it - start) / max(total - start, 1), 1.0)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def factor(self, it: int) -> float:
        """LR multiplier at iteration ``it``: warm-up × decay."""
        return self.warmup(it) * self.decay(it)


def build_schedule(spec: ScheduleSpec, *, epochs: int, iters_per_epoch: int) -> LRSchedule:
    """The :class:`LRSchedule` of ``spec`` for a run of ``epochs`` × ``iters_per_epoch`` iterations.

    Warm-up = max(``warmup_iters``, ``warmup_epochs`` · iters/epoch), capped at a third of training
    so that short (smoke) runs still train at full LR; its start factor and shape are the spec's.
    """
    total = max(int(epochs) * int(iters_per_epoch), 1)
    warm = min(max(int(spec.warmup_iters), int(round(spec.warmup_epochs * iters_per_epoch))), total // 3)
    return LRSchedule(
        name=spec.name,
        total_iters=total,
        warmup_iters=warm,
        warmup_start=spec.warmup_start,
        warmup_power=spec.warmup_power,
        min_lr_ratio=spec.min_lr_ratio,
        flat_fraction=spec.flat_fraction,
        milestones=tuple(spec.milestones),
    )


class IterLRScheduler:
    """Sets ``group["lr"] = group["initial_lr"] · schedule.factor(it)`` each iteration.

    ``step()`` is called after each optimizer step; ``state_dict`` holds the iteration only (the
    schedule itself is rebuilt from the config on resume).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule, last_iter: int = 0):
        self.optimizer = optimizer
        self.schedule = schedule
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.iter = int(last_iter)
        self._apply()

    def _apply(self) -> None:
        f = self.schedule.factor(self.iter)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        self.iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, int]:
        return {"iter": self.iter}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iter = int(state["iter"])
        self._apply()
