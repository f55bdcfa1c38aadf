"""Pyramid Pooling Module (PSPNet, Zhao et al., CVPR 2017, §3.2)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct

__all__ = ["PyramidPoolingModule"]


class PyramidPoolingModule(nn.Module):
    """PSPNet §3.2 pyramid pooling: for each bin size b (default 1, 2, 3, 6) adaptive-average-pool
    to ``b×b``, 1×1 conv (C→C/4, bias, ReLU), bilinear upsample back to ``H×W``; concat the input
    with the pooled branches (``C + len(bins)·C/4`` channels), then a 1×1 ConvNormAct back to
    ``out_channels`` (default ``C``) so the module can sit in front of an unchanged neck.

    Shapes: ``N×C×H×W`` → ``N×out×H×W``. The branch convs carry no BatchNorm, so a 1×1 pooled
    map trains with batch 1 too.
    """

    def __init__(self, channels: int, out_channels: int | None = None, bins: Sequence[int] = (1, 2, 3, 6),
                 act: str = "silu"):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        branch = max(channels // 4, 1)
        self.branches = nn.ModuleList(
            ConvNormAct(channels, branch, 1, norm=False, act="relu") for _ in self.bins
        )
        self.fuse = ConvNormAct(channels + branch * len(self.bins), out_channels or channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        feats = [x]
        for b, conv in zip(self.bins, self.branches):
            y = conv(F.adaptive_avg_pool2d(x, b))
            feats.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False).to(x.dtype))
        return self.fuse(torch.cat(feats, 1))
