"""Exponential moving averages of model weights.

* :class:`ExpMomentumEMA` (RTMDet, MMDetection ``ExpMomentumEMA``): after the first update (a copy),
  ``avg ← (1 − μ)·avg + μ·param`` with ``μ = (1 − m)·exp(−(1 + step)/gamma) + m`` (m = 2e-4,
  gamma = 2000); buffers averaged too (``update_buffers=True``).
* :class:`RampedEMA` (YOLOv6 v3.0 §3.4, ``ModelEMA``): ``d = decay·(1 − exp(−updates/ramp))``
  (decay 0.9999, ramp 2000), ``avg ← d·avg + (1 − d)·param`` on every float state entry, starting
  from a copy of the model.

Both keep an eval-mode deep copy in ``.module`` and checkpoint ``{"module": state_dict, "updates": n}``.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .specs import EMASpec

__all__ = ["ModelEMA", "ExpMomentumEMA", "RampedEMA", "build_ema", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel / DataParallel wrappers."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """Base: holds the averaged copy; subclasses give the weight of the new value per update."""

    copy_first: bool = False

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def source_weight(self, updates: int) -> float:
        """Weight μ of the live model in ``avg ← (1 − μ)·avg + μ·param`` at this update."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = unwrap_model(model).state_dict()
        if self.copy_first and self.updates == 0:
            mu = 1.0
        else:
            mu = self.source_weight(self.updates)
        for name, avg in self.module.state_dict().items():
            value = src[name].detach()
            if avg.dtype.is_floating_point:
                avg.lerp_(value.to(avg.dtype), mu)
            else:
                avg.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    def to(self, device: torch.device | str) -> "ModelEMA":
        self.module.to(device)
        return self


class ExpMomentumEMA(ModelEMA):
    """RTMDet EMA; ``updates`` is MMEngine's ``steps`` (the first update copies the weights)."""

    copy_first = True

    def __init__(self, model: nn.Module, momentum: float = 2e-4, gamma: float = 2000.0):
        super().__init__(model)
        self.momentum, self.gamma = float(momentum), float(gamma)

    def source_weight(self, updates: int) -> float:
        m = self.momentum
        return (1.0 - m) * math.exp(-float(1 + updates) / self.gamma) + m


class RampedEMA(ModelEMA):
    """YOLOv6 EMA: the counter is incremented before the decay is computed."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, ramp: float = 2000.0):
        super().__init__(model)
        self.decay, self.ramp = float(decay), float(ramp)

    def source_weight(self, updates: int) -> float:
        d = self.decay * (1.0 - math.exp(-float(updates + 1) / self.ramp))
        return 1.0 - d


def build_ema(model: nn.Module, spec: EMASpec) -> ModelEMA | None:
    """The EMA of ``spec`` over ``model`` (``None`` when ``spec.enabled`` is false): ``exp_momentum``
    (RTMDet: ``momentum``, ``gamma``) or ``ramped`` (YOLOv6: ``decay``, ramp ``gamma``)."""
    if not spec.enabled:
        return None
    if spec.kind == "exp_momentum":
        return ExpMomentumEMA(model, momentum=spec.momentum, gamma=spec.gamma)
    return RampedEMA(model, decay=spec.decay, ramp=spec.gamma)
