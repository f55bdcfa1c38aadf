"""Bi-directional Concatenation (BiC) module of RepBi-PAN (YOLOv6 v3.0, arXiv 2301.05586, "Network Design").

YOLOv6's code calls this module ``BiFusion``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .conv import ConvNormAct

__all__ = ["BiC"]

_BN = {"bn_eps": 1e-3, "bn_momentum": 0.03}


class BiC(nn.Module):
    """Fuses a top-down feature with the same-level and the next-higher-resolution backbone features.

    Args:
        in_channels: ``(same_level, higher_res)`` backbone channels (``C_l``, ``C_{l-1}``).
        out_channels: ``C``, also the channels of the top-down input.

    Inputs ``(top, same, high)``: ``N×C×H/2×W/2``, ``N×C_l×H×W``, ``N×C_{l-1}×2H×2W``.
    ``top`` → 2×2 stride-2 transposed conv (with bias); ``same`` → 1×1; ``high`` → 1×1 → 3×3 stride 2;
    concat (3C) → 1×1 → ``N×C×H×W``. All convs ConvBN-ReLU.
    """

    def __init__(self, in_channels: tuple[int, int], out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(out_channels, out_channels, 2, 2, bias=True)
        self.lateral = ConvNormAct(in_channels[0], out_channels, 1, act="relu", **_BN)
        self.reduce_high = ConvNormAct(in_channels[1], out_channels, 1, act="relu", **_BN)
        self.downsample = ConvNormAct(out_channels, out_channels, 3, 2, act="relu", **_BN)
        self.fuse = ConvNormAct(out_channels * 3, out_channels, 1, act="relu", **_BN)

    def forward(self, top: Tensor, same: Tensor, high: Tensor) -> Tensor:
        up = self.upsample(top)
        down = self.downsample(self.reduce_high(high))
        return self.fuse(torch.cat((up, self.lateral(same), down), 1))
