"""CSPNeXt building blocks (RTMDet, Lyu et al. 2022, arXiv 2212.07784, §3.1 and Fig. 3).

Module attribute names follow the reference implementation so official weights map one to one
(only ``bn`` is called ``norm`` here, from :class:`ConvNormAct`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct
from .spp import same_max_pools

__all__ = ["DepthwiseSeparableConv", "CSPNeXtBlock", "ChannelAttention", "SPPBottleneck", "CSPLayer"]


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k×k ConvNormAct followed by a pointwise 1×1 ConvNormAct (MobileNet factorisation).

    Shapes: ``N×in×H×W`` → ``N×out×H/stride×W/stride``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 1,
                 act: str = "silu"):
        super().__init__()
        self.depthwise_conv = ConvNormAct(in_channels, in_channels, kernel_size, stride,
                                          groups=in_channels, act=act)
        self.pointwise_conv = ConvNormAct(in_channels, out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class CSPNeXtBlock(nn.Module):
    """RTMDet §3.1 basic block: 3×3 ConvNormAct → depthwise-separable (5×5 depthwise + 1×1),
    plus the input when ``add_identity`` (and channels agree).

    Shapes: ``N×in×H×W`` → ``N×out×H×W``; hidden width ``int(out × expansion)``.
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: float = 1.0, add_identity: bool = True,
                 kernel_size: int = 5, act: str = "silu"):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormAct(in_channels, hidden, 3, act=act)
        self.conv2 = DepthwiseSeparableConv(hidden, out_channels, kernel_size, act=act)
        self.add_identity = add_identity and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    """RTMDet §3.1 channel attention: global average pool → 1×1 conv with bias (C→C, no
    reduction) → hard-sigmoid → channel-wise rescale. Shapes: ``N×C×H×W`` → ``N×C×H×W``."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        w = F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
        return x * w.to(x.dtype)


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (YOLOv3-SPP / CSPDarknet form, used in CSPNeXt's last stage):
    1×1 ConvNormAct (C→C/2), max-pools k = 5, 9, 13 (stride 1, same padding) in parallel, concat
    of the 4 maps, 1×1 ConvNormAct (2C→out). This is SPP, not the sequential SPPF.

    Shapes: ``N×in×H×W`` → ``N×out×H×W``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 9, 13),
                 act: str = "silu"):
        super().__init__()
        mid = in_channels // 2
        self.kernel_sizes = tuple(kernel_sizes)
        self.conv1 = ConvNormAct(in_channels, mid, 1, act=act)
        self.conv2 = ConvNormAct(mid * (len(self.kernel_sizes) + 1), out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        pooled = same_max_pools(x, self.kernel_sizes)
        return self.conv2(torch.cat([x, *pooled], 1))


class CSPLayer(nn.Module):
    """Cross-stage-partial layer of CSPNeXt blocks (RTMDet §3.1, Fig. 3).

    ``main_conv`` (1×1, in→mid) → n × :class:`CSPNeXtBlock`; ``short_conv`` (1×1, in→mid) in
    parallel; concat (2·mid) → optional :class:`ChannelAttention` → ``final_conv`` (1×1, 2·mid→out),
    with ``mid = int(out × expand_ratio)``. Shapes: ``N×in×H×W`` → ``N×out×H×W``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 1, *, add_identity: bool = True,
                 expand_ratio: float = 0.5, channel_attention: bool = False, kernel_size: int = 5,
                 act: str = "silu"):
        super().__init__()
        mid = int(out_channels * expand_ratio)
        self.main_conv = ConvNormAct(in_channels, mid, 1, act=act)
        self.short_conv = ConvNormAct(in_channels, mid, 1, act=act)
        self.final_conv = ConvNormAct(2 * mid, out_channels, 1, act=act)
        self.blocks = nn.Sequential(*(
            CSPNeXtBlock(mid, mid, 1.0, add_identity, kernel_size, act) for _ in range(num_blocks)
        ))
        self.attention = ChannelAttention(2 * mid) if channel_attention else None

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), 1)
        if self.attention is not None:
            y = self.attention(y)
        return self.final_conv(y)
