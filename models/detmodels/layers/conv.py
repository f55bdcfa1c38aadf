"""Conv → norm → activation, and the one shared conv+BN folding used by every re-parameterisation."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvNormAct", "make_act", "fuse_conv_bn"]


def make_act(name: str | None) -> nn.Module:
    """Activation by name: ``silu``, ``relu``, ``leaky_relu`` (0.1, as Darknet), ``hardsigmoid``, ``relu6`` or None."""
    if name is None or name == "none":
        return nn.Identity()
    acts = {
        "silu": lambda: nn.SiLU(inplace=True),
        "swish": lambda: nn.SiLU(inplace=True),
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(inplace=True),
        "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
        "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]()


class ConvNormAct(nn.Module):
    """``Conv2d`` (no bias when normed) → ``BatchNorm2d`` → activation (mmcv's ConvModule).

    Shapes: ``N×in×H×W`` → ``N×out×H/stride×W/stride`` ("same" padding for odd kernels).
    After :meth:`reparameterize` the BN is folded into a biased conv (``norm`` becomes Identity).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        dilation: int = 1,
        padding: int | None = None,
        act: str | None = "silu",
        norm: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        bias: bool | None = None,
    ):
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding,
            dilation=dilation, groups=groups, bias=(not norm) if bias is None else bias,
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum) if norm else nn.Identity()
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the conv (deploy form); a no-op when already folded."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.norm)
            self.norm = nn.Identity()


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d | None, bn: nn.BatchNorm2d, *, out_kernel: torch.Tensor | None = None) -> nn.Conv2d:
    """Fold ``bn`` (eval statistics) into ``conv`` and return a new biased conv.

    W' = W·γ/√(σ²+ε), b' = β + (b − μ)·γ/√(σ²+ε). ``out_kernel`` replaces ``conv.weight`` (used for
    an identity branch expressed as a kernel, with ``conv`` giving only the geometry).
    """
    weight = conv.weight if out_kernel is None else out_kernel
    bias = conv.bias if (conv.bias is not None and out_kernel is None) else torch.zeros(
        weight.shape[0], device=weight.device, dtype=weight.dtype)
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True,
    ).to(weight.device, weight.dtype)
    fused.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused
