"""Re-parameterizable VGG-style blocks (RepVGG, Ding et al. 2021 §3) and the YOLOv6 stage blocks
built from them (YOLOv6 v3.0, arXiv 2301.05586, "Network Design": RepBlock, BottleRep, BepC3 / CSPStackRep).

Every block keeps its training and deploy forms in one class; ``reparameterize()`` switches in place,
folding each BN with the one shared :func:`detmodels.layers.conv.fuse_conv_bn`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .conv import ConvNormAct, fuse_conv_bn, make_act
from .repopt import LinearAddBlock, RealVGGBlock

__all__ = ["RepVGGBlock", "RepBlock", "BottleRep", "BepC3", "CSPStackRep", "make_rep_unit", "REP_UNIT_KINDS"]

# YOLOv6 initialises every BatchNorm with these (Y6 `initialize_weights`).
_BN = {"bn_eps": 1e-3, "bn_momentum": 0.03}


class RepVGGBlock(nn.Module):
    """RepVGG block (RepVGG §3.2): ``act(BN(conv3×3 x) + BN(conv1×1 x) + BN(x))``.

    The identity branch exists only when ``in == out`` and ``stride == 1``. After
    :meth:`reparameterize` the three branches are one biased 3×3 conv (``fused``).

    Shapes: ``N×in×H×W`` → ``N×out×H/stride×W/stride``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, act: str | None = "relu",
        bn_eps: float = 1e-3, bn_momentum: float = 0.03,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.conv3x3 = ConvNormAct(in_channels, out_channels, 3, stride, act=None, **bn)
        self.conv1x1 = ConvNormAct(in_channels, out_channels, 1, stride, act=None, **bn)
        self.identity = (
            nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum)
            if in_channels == out_channels and stride == 1 else None
        )
        self.fused: nn.Conv2d | None = None
        self.act = make_act(act)

    @property
    def is_fused(self) -> bool:
        return self.fused is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.conv3x3(x) + self.conv1x1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The single 3×3 kernel (``out×in×3×3``) and bias (``out``) equal to the three branches in eval mode."""
        dense = fuse_conv_bn(self.conv3x3.conv, self.conv3x3.norm)
        point = fuse_conv_bn(self.conv1x1.conv, self.conv1x1.norm)
        kernel = dense.weight + nn.functional.pad(point.weight, [1, 1, 1, 1])
        bias = dense.bias + point.bias
        if self.identity is not None:
            eye = torch.zeros_like(dense.weight)
            idx = torch.arange(self.in_channels, device=eye.device)
            eye[idx, idx, 1, 1] = 1.0
            ident = fuse_conv_bn(self.conv3x3.conv, self.identity, out_kernel=eye)
            kernel, bias = kernel + ident.weight, bias + ident.bias
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge the branches into ``fused`` (deploy form); a no-op when already fused."""
        if self.fused is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        ref = self.conv3x3.conv
        fused = nn.Conv2d(ref.in_channels, ref.out_channels, 3, ref.stride, 1, bias=True)
        fused = fused.to(kernel.device, kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        del self.conv3x3, self.conv1x1, self.identity
        self.identity = None
        self.fused = fused


REP_UNIT_KINDS = ("repvgg", "conv_silu", "conv_relu", "hyper_search", "repopt")


def make_rep_unit(kind: str, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """The basic 3×3 unit of a YOLOv6 stage: ``repvgg`` (RepVGGBlock, ReLU), ``conv_silu`` or
    ``conv_relu`` (plain ConvNormAct, YOLOv6-L's ``training_mode``), ``hyper_search``
    (:class:`~detmodels.layers.repopt.LinearAddBlock`, trainable CSLA scales) or ``repopt``
    (:class:`~detmodels.layers.repopt.RealVGGBlock`, trained with :class:`detmodels.repopt.RepOptimizer`)."""
    if kind == "repvgg":
        return RepVGGBlock(in_channels, out_channels, stride, **_BN)
    if kind == "hyper_search":
        return LinearAddBlock(in_channels, out_channels, stride, **_BN)
    if kind == "repopt":
        return RealVGGBlock(in_channels, out_channels, stride, **_BN)
    if kind in ("conv_silu", "conv_relu"):
        return ConvNormAct(in_channels, out_channels, 3, stride, act=kind.split("_")[1], **_BN)
    raise ValueError(f"unknown block kind {kind!r}; expected one of {REP_UNIT_KINDS}")


class BottleRep(nn.Module):
    """Two basic units plus a shortcut scaled by a learnable scalar ``alpha`` (YOLOv6 v3.0 "Network Design").

    Shapes: ``N×in×H×W`` → ``N×out×H×W``; the shortcut exists only when ``in == out``.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "repvgg", *, learnable_alpha: bool = True):
        super().__init__()
        self.block1 = make_rep_unit(kind, in_channels, out_channels)
        self.block2 = make_rep_unit(kind, out_channels, out_channels)
        self.has_shortcut = in_channels == out_channels
        if learnable_alpha:
            self.alpha = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("alpha", torch.ones(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block2(self.block1(x))
        return y + self.alpha * x if self.has_shortcut else y


class RepBlock(nn.Module):
    """A stage of ``n`` units: the first maps ``in → out``, the rest ``out → out`` (YOLOv6 v3.0 "Network Design").

    ``unit`` is ``repvgg``/``conv_silu``/``conv_relu`` (``n`` basic units) or ``bottlerep`` (``n // 2``
    BottleRep units built from ``basic`` units, as inside BepC3). Shapes: ``N×in×H×W`` → ``N×out×H×W``.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, *, unit: str = "repvgg",
                 basic: str = "repvgg"):
        super().__init__()
        if unit == "bottlerep":
            n = max(n // 2, 1)
            make: Callable[[int, int], nn.Module] = lambda i, o: BottleRep(i, o, basic)  # noqa: E731
        else:
            make = lambda i, o: make_rep_unit(unit, i, o)  # noqa: E731
        self.first = make(in_channels, out_channels)
        self.rest = nn.Sequential(*(make(out_channels, out_channels) for _ in range(n - 1))) if n > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(x)
        return self.rest(x) if self.rest is not None else x


class BepC3(nn.Module):
    """CSPStackRep block (YOLOv6 v3.0 "Network Design", "BepC3" in its code): a CSP split whose main path stacks
    ``n // 2`` BottleRep units.

    ``c = int(out · e)``; main: 1×1 in→c → RepBlock(BottleRep); shortcut: 1×1 in→c; concat → 1×1 2c→out.
    The 1×1 convs use ReLU, or SiLU when ``kind == "conv_silu"``. Shapes: ``N×in×H×W`` → ``N×out×H×W``.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, e: float = 0.5, kind: str = "repvgg"):
        super().__init__()
        hidden = int(out_channels * e)
        act = "silu" if kind == "conv_silu" else "relu"
        self.conv_main = ConvNormAct(in_channels, hidden, 1, act=act, **_BN)
        self.conv_short = ConvNormAct(in_channels, hidden, 1, act=act, **_BN)
        self.conv_out = ConvNormAct(2 * hidden, out_channels, 1, act=act, **_BN)
        self.blocks = RepBlock(hidden, hidden, n, unit="bottlerep", basic=kind)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(torch.cat((self.blocks(self.conv_main(x)), self.conv_short(x)), 1))


CSPStackRep = BepC3
