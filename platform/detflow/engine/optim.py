"""Optimiser construction from a typed :class:`~detflow.engine.specs.OptimizerSpec`: parameter
groups without weight decay on norms and biases.

As RTMDet's MMDetection config (``norm_decay_mult=0``, ``bias_decay_mult=0``) and YOLOv6 v3.0 §3.4
(BN weights and biases without decay). Each recipe's values (lr, batch, momentum …) are in
:mod:`detflow.engine.recipes`.

Example::

    optimizer = build_optimizer(model, recipe.optimizer, total_batch=64)
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .specs import OptimizerSpec

__all__ = ["param_groups", "build_optimizer", "scaled_lr"]

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


def scaled_lr(lr: float, total_batch: int, base_batch: int, scale: bool) -> float:
    """Linear scaling rule: ``lr · total_batch / base_batch`` when ``scale`` (else ``lr``)."""
    return lr * total_batch / base_batch if scale else lr


def build_optimizer(model: nn.Module, spec: OptimizerSpec, *, total_batch: int,
                    masks: Mapping[torch.Tensor, torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """AdamW (β = (``spec.momentum``, 0.999)), SGD (``spec.nesterov``) or RepOpt-SGD
    (``detmodels.RepOptimizer``: SGD whose masked gradients are multiplied by ``masks`` first) over
    :func:`param_groups`.

    Args:
        spec: the resolved optimiser (a recipe's, with the config's overrides merged).
        total_batch: images per step over all workers (for the linear LR scaling rule).
        masks: ``repopt`` only: ``{conv weight: gradient mask}`` (``detmodels.grad_masks``).
    """
    lr = scaled_lr(spec.lr, total_batch, spec.base_batch, spec.scale_lr_by_batch)
    groups = param_groups(model, spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(spec.momentum, 0.999))
    if spec.name == "repopt":
        if masks is None:
            raise ValueError("optimizer repopt needs the gradient masks (detmodels.grad_masks)")
        import detmodels

        return detmodels.RepOptimizer(groups, masks, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov)
    return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov)


def named_groups(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, float]]:
    """(group name, current lr) pairs, for logging."""
    return [(g.get("name", str(i)), g["lr"]) for i, g in enumerate(optimizer.param_groups)]
