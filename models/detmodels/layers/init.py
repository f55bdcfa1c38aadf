"""Initialisation and normalisation helpers shared by the families' init schemes (issue 25).

Each family applies its reference code's scheme after construction, in its own module, with these
helpers; the shared layers keep PyTorch's defaults. Loading converted or pretrained weights
overwrites whatever is set here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["prior_bias", "kaiming_normal_convs_", "set_bn_"]
__all__ += ["variance_scaling_", "variance_scaling_convs_"]
__all__ += ["kaiming_uniform_convs_", "normal_convs_"]

_BN = nn.modules.batchnorm._BatchNorm


def prior_bias(prior: float) -> float:
    """Bias ``−log((1 − π)/π)`` that makes ``σ(bias) = π`` (Lin et al. 2017, Focal Loss §4.1)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior probability must be in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


def kaiming_normal_convs_(module: nn.Module, *, a: float = 0.0, mode: str = "fan_in",
                          nonlinearity: str = "leaky_relu", bias: float = 0.0) -> None:
    """Every ``nn.Conv2d`` inside ``module``: weight ~ ``N(0, gain/√fan)`` (``nn.init.kaiming_normal_``
    with ``a``, ``mode``, ``nonlinearity``; fan of grouped convs is per group); biases set to ``bias``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=a, mode=mode, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)


def set_bn_(module: nn.Module, *, eps: float, momentum: float, reset_affine: bool = False) -> None:
    """Every BatchNorm inside ``module`` gets ``eps`` and ``momentum`` (PyTorch convention:
    ``running = (1 − momentum)·running + momentum·batch``); ``reset_affine`` also sets γ = 1, β = 0."""
    for m in module.modules():
        if isinstance(m, _BN):
            m.eps, m.momentum = eps, momentum
            if reset_affine and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# Keras' correction: the std of a normal truncated at ±2σ is 0.87962566… · σ.
_TRUNC_STD = 0.87962566103423978


@torch.no_grad()
def variance_scaling_(weight: torch.Tensor, *, scale: float = 1.0, mode: str = "fan_in") -> torch.Tensor:
    """Keras/TF ``VarianceScaling(scale, mode, distribution="truncated_normal")`` on a conv weight
    ``out×in/groups×kh×kw``: normal truncated at ±2σ′ with σ′ = √(scale/fan)/0.8796, so that the
    final std is √(scale/fan) (fan_in = in/groups·kh·kw, fan_out = out·kh·kw, fan_avg their mean).
    Keras' default ``"VarianceScaling"`` (scale 1, fan_in) is TF Model Garden's conv initialiser."""
    receptive = weight[0, 0].numel()
    fans = {"fan_in": weight.shape[1] * receptive, "fan_out": weight.shape[0] * receptive}
    fans["fan_avg"] = (fans["fan_in"] + fans["fan_out"]) / 2
    if mode not in fans:
        raise ValueError(f"variance scaling mode must be one of {sorted(fans)}, got {mode!r}")
    std = math.sqrt(scale / max(1.0, fans[mode])) / _TRUNC_STD
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def variance_scaling_convs_(module: nn.Module, *, scale: float = 1.0, mode: str = "fan_in") -> None:
    """Every ``nn.Conv2d`` inside ``module`` gets :func:`variance_scaling_`; biases are zeroed (Keras'
    default ``bias_initializer="zeros"``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            variance_scaling_(m.weight, scale=scale, mode=mode)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def kaiming_uniform_convs_(module: nn.Module, *, a: float = math.sqrt(5), mode: str = "fan_in",
                           nonlinearity: str = "leaky_relu", bias: float = 0.0) -> None:
    """Every ``nn.Conv2d`` inside ``module``: weight ~ ``U(±gain·√(3/fan))`` (``nn.init.kaiming_uniform_``;
    with the defaults a = √5, fan_in, the bound is 1/√fan_in, PyTorch's own conv default); biases set to
    ``bias`` (mmengine ``KaimingInit``, as the ``init_cfg`` of mmdetection's CSPNeXt / CSPNeXtPAFPN)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=a, mode=mode, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)


def normal_convs_(module: nn.Module, *, std: float, bias: float = 0.0) -> None:
    """Every ``nn.Conv2d`` inside ``module``: weight ~ ``N(0, std)``, biases set to ``bias``
    (mmengine ``normal_init``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)
