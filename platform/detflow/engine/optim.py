"""Optimiser construction: parameter groups without weight decay on norms and biases.

RTMDet (MMDetection config): AdamW lr 0.004 at batch 256, weight decay 0.05, ``norm_decay_mult=0``,
``bias_decay_mult=0``. YOLOv6 v3.0 §3.4: SGD momentum 0.937 Nesterov, lr 0.01 at batch 32·GPUs,
weight decay 5e-4; BN weights and biases without decay.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["OPTIMIZER_DEFAULTS", "param_groups", "build_optimizer", "scaled_lr"]

OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 0.004, "weight_decay": 0.05, "momentum": 0.9, "nesterov": False,
              "scale_lr_by_batch": True, "base_batch": 256},
    "sgd": {"lr": 0.01, "weight_decay": 5e-4, "momentum": 0.937, "nesterov": True,
            "scale_lr_by_batch": True, "base_batch": 64},
}

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: conv/linear weights with ``weight_decay``; norm parameters and all biases without.

    Frozen parameters (``requires_grad=False``) are left out; every trainable parameter appears once.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORMS) or name.endswith("bias") or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def scaled_lr(lr: float, total_batch: int, base_batch: int | None, scale: bool) -> float:
    """Linear scaling rule: ``lr · total_batch / base_batch`` when ``scale`` (else ``lr``)."""
    if not scale or not base_batch:
        return lr
    return lr * total_batch / base_batch


def build_optimizer(model: nn.Module, name: str, *, total_batch: int, **options: Any) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over :func:`param_groups`.

    Args:
        name: ``adamw`` | ``sgd``.
        total_batch: images per step over all workers (for the linear LR scaling rule).
        options: ``lr, weight_decay, momentum, nesterov, scale_lr_by_batch, base_batch``; ``None``
            values take :data:`OPTIMIZER_DEFAULTS` of ``name``.
    """
    if name not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZER_DEFAULTS)}")
    o = {**OPTIMIZER_DEFAULTS[name], **{k: v for k, v in options.items() if v is not None}}
    lr = scaled_lr(o["lr"], total_batch, o["base_batch"], o["scale_lr_by_batch"])
    groups = param_groups(model, o["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(o["momentum"], 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=o["momentum"], nesterov=o["nesterov"])


def named_groups(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, float]]:
    """(group name, current lr) pairs, for logging."""
    return [(g.get("name", str(i)), g["lr"]) for i, g in enumerate(optimizer.param_groups)]
