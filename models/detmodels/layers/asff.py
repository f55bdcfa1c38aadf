"""Adaptively Spatial Feature Fusion (Liu et al. 2019, "Learning Spatial Fusion for Single-Shot
Object Detection", arXiv 1911.09516, §3.2–3.3) and the Receptive Field Block used by ASFF*
(Liu et al. 2018, "Receptive Field Block Net", arXiv 1711.07767, §3).

Levels are numbered as in the paper: level 0 is the coarsest (stride 32), level 2 the finest.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct

__all__ = ["ASFF", "ASFFResize", "RFBBlock"]


class ASFFResize(nn.Module):
    """§3.2 "feature resizing" of one source level to the target level's resolution and width.

    * same level: identity;
    * up-sampling (coarser source): 1×1 ConvNormAct to the target width (when widths differ),
      then nearest ×2^Δ;
    * down-sampling by 2: a 3×3 stride-2 ConvNormAct;
    * down-sampling by 4: a 3×3 stride-2 max-pool, then a 3×3 stride-2 ConvNormAct.

    Shapes: ``N×in×H×W`` → ``N×out×H·2^(src−dst)×W·2^(src−dst)``.
    """

    def __init__(self, in_channels: int, out_channels: int, src_level: int, dst_level: int, act: str = "leaky_relu"):
        super().__init__()
        delta = dst_level - src_level  # > 0: the source is coarser, up-sample by 2^delta
        self.scale = 2**delta if delta > 0 else 1
        self.pool = delta < -1
        if delta < -2:
            raise ValueError(f"ASFF resizes by at most 4×, got levels {src_level} → {dst_level}")
        self.conv = None
        if delta < 0:
            self.conv = ConvNormAct(in_channels, out_channels, 3, 2, act=act)
        elif in_channels != out_channels:
            self.conv = ConvNormAct(in_channels, out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            x = F.max_pool2d(x, 3, 2, 1)
        if self.conv is not None:
            x = self.conv(x)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return x


class ASFF(nn.Module):
    """ASFF at one target ``level`` (§3.3): resize the three levels to it, compress each to
    ``compress_channels`` (16; 8 with RFB) with a 1×1 ConvNormAct, concat → 1×1 conv (with bias)
    to 3 logits → softmax over levels at every pixel → weighted sum → 3×3 ConvNormAct ``expand``.

    Args:
        level: target level (0 = stride 32).
        in_channels: widths of levels 0, 1, 2 (YOLOv3: 512, 256, 256).
        inter_channels: fusion width per target level (YOLOv3: 512, 256, 256).
        out_channels: ``expand`` width (YOLOv3: 1024, 512, 256 for levels 0, 1, 2).
    ``forward(feats)`` with ``feats = [x0, x1, x2]`` → ``N×out×H_level×W_level``;
    ``forward(feats, return_weights=True)`` also returns the ``N×3×H×W`` fusion weights.
    """

    def __init__(self, level: int, in_channels: Sequence[int] = (512, 256, 256),
                 inter_channels: Sequence[int] = (512, 256, 256), out_channels: int = 1024,
                 compress_channels: int = 16, act: str = "leaky_relu"):
        super().__init__()
        self.level = level
        inter = inter_channels[level]
        self.resize = nn.ModuleList(ASFFResize(c, inter, src, level, act) for src, c in enumerate(in_channels))
        self.weight_convs = nn.ModuleList(ConvNormAct(inter, compress_channels, 1, act=act) for _ in in_channels)
        self.weight_levels = nn.Conv2d(compress_channels * len(in_channels), len(in_channels), 1)
        self.expand = ConvNormAct(inter, out_channels, 3, act=act)

    def fusion_weights(self, resized: Sequence[Tensor]) -> Tensor:
        """Per-pixel softmax over levels, ``N×L×H×W`` (non-negative, sums to 1 over ``L``)."""
        logits = self.weight_levels(torch.cat([conv(r) for conv, r in zip(self.weight_convs, resized)], 1))
        return F.softmax(logits, dim=1)

    def forward(self, feats: Sequence[Tensor], return_weights: bool = False):
        resized = [r(f) for r, f in zip(self.resize, feats)]
        weights = self.fusion_weights(resized)
        fused = sum(r * weights[:, i:i + 1] for i, r in enumerate(resized))
        out = self.expand(fused)
        return (out, weights) if return_weights else out


class RFBBlock(nn.Module):
    """Receptive Field Block (RFB Net §3) as ASFF* places it before the deformable conv: four
    branches at ``C/4`` width (1×1; 1×1→3×3; 1×1→3×3→3×3 dilation 2; 1×1→5×5→3×3 dilation 3),
    plain biased convs without norm or activation, concatenated (+ input when ``residual``).

    Shapes: ``N×C×H×W`` → ``N×C×H×W`` (``C`` divisible by 4).
    """

    def __init__(self, channels: int, residual: bool = False):
        super().__init__()
        c = channels // 4

        def conv(cin: int, k: int, d: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, c, k, 1, d * (k - 1) // 2, dilation=d)

        self.branches = nn.ModuleList([
            nn.Sequential(conv(channels, 1)),
            nn.Sequential(conv(channels, 1), conv(c, 3)),
            nn.Sequential(conv(channels, 1), conv(c, 3), conv(c, 3, 2)),
            nn.Sequential(conv(channels, 1), conv(c, 5), conv(c, 3, 3)),
        ])
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([b(x) for b in self.branches], 1)
        return out + x if self.residual else out
