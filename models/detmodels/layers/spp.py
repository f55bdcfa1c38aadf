"""Spatial-pyramid-pooling channel-merge layers of YOLOv6 (YOLOv6 v3.0, arXiv 2301.05586, "Network Design"):
SPPF / SimSPPF (YOLOv5-style fast SPP with three chained 5×5 max-pools) and SimCSPSPPF (its CSP form).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct

__all__ = ["SPPF", "SimSPPF", "SimCSPSPPF", "same_max_pools"]

_BN = {"bn_eps": 1e-3, "bn_momentum": 0.03}


def same_max_pools(x: Tensor, kernel_sizes: Sequence[int]) -> list[Tensor]:
    """Stride-1, same-padded max-pools of ``x`` for each odd ``k`` in ``kernel_sizes`` (``N×C×H×W`` each).

    The parallel pools of SPP (YOLOv3-SPP, CSPNeXt's SPPBottleneck: k = 5, 9, 13) are computed as a
    cascade: a ``k``-pool of an ``m``-pool is the ``(k + m − 1)``-pool, because the implicit padding
    is −inf. Results are bit-identical to ``F.max_pool2d(x, k, 1, k // 2)`` and cost 3 × 25 instead
    of 25 + 81 + 169 comparisons per output for (5, 9, 13).
    """
    out: list[Tensor] = []
    prev, prev_k = x, 1
    for k in kernel_sizes:
        if k % 2 == 0:
            raise ValueError(f"same_max_pools: odd kernel sizes only, got {k}")
        step = k - prev_k + 1 if k > prev_k else None
        if step is None:
            prev, prev_k = x, 1
            step = k
        prev = F.max_pool2d(prev, step, 1, step // 2)
        prev_k = k
        out.append(prev)
    return out


def _pyramid(x: Tensor, pool: nn.Module) -> Tensor:
    """``[x, p(x), p(p(x)), p(p(p(x)))]`` concatenated on channels (``N×4C×H×W``)."""
    y1 = pool(x)
    y2 = pool(y1)
    return torch.cat((x, y1, y2, pool(y2)), 1)


class SPPF(nn.Module):
    """Fast SPP: 1×1 in→in/2 → three chained ``k×k`` stride-1 max-pools → concat of 4 → 1×1 → out.

    ``act="silu"`` is YOLOv6's SPPF (conv_silu models, L); ``act="relu"`` its SimSPPF (M).
    Shapes: ``N×in×H×W`` → ``N×out×H×W``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, *, act: str = "silu"):
        super().__init__()
        hidden = in_channels // 2
        self.conv_in = ConvNormAct(in_channels, hidden, 1, act=act, **_BN)
        self.conv_out = ConvNormAct(hidden * 4, out_channels, 1, act=act, **_BN)
        self.pool = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(_pyramid(self.conv_in(x), self.pool))


class SimSPPF(SPPF):
    """SPPF with ReLU activations (YOLOv6 "SimSPPF")."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__(in_channels, out_channels, kernel_size, act="relu")


class SimCSPSPPF(nn.Module):
    """CSP version of SimSPPF (YOLOv6 v3.0 "Network Design"), ``c = int(out · e)``.

    Branch A: 1×1 in→c → 3×3 → 1×1 → pyramid of 3 chained pools (concat 4c) → 1×1 4c→c → 3×3.
    Branch B: 1×1 in→c. Output: concat (2c) → 1×1 → out. ReLU throughout (``act="silu"`` gives
    YOLOv6's CSPSPPF). Shapes: ``N×in×H×W`` → ``N×out×H×W``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, e: float = 0.5, *, act: str = "relu"):
        super().__init__()
        c = int(out_channels * e)
        self.pre1 = ConvNormAct(in_channels, c, 1, act=act, **_BN)
        self.shortcut = ConvNormAct(in_channels, c, 1, act=act, **_BN)
        self.pre2 = ConvNormAct(c, c, 3, act=act, **_BN)
        self.pre3 = ConvNormAct(c, c, 1, act=act, **_BN)
        self.post1 = ConvNormAct(4 * c, c, 1, act=act, **_BN)
        self.post2 = ConvNormAct(c, c, 3, act=act, **_BN)
        self.fuse = ConvNormAct(2 * c, out_channels, 1, act=act, **_BN)
        self.pool = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.pre3(self.pre2(self.pre1(x)))
        a = self.post2(self.post1(_pyramid(a, self.pool)))
        return self.fuse(torch.cat((self.shortcut(x), a), 1))
