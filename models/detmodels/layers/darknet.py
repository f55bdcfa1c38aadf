"""Darknet-53 (Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement", arXiv 1804.02767, §2.4
Table 1) and the parameter-free SPP block of YOLOv3-SPP (He et al. 2014 spatial pyramid pooling,
as used by the ASFF paper's baseline, arXiv 1911.09516 §4).

Conv unit: conv without bias → BatchNorm (PyTorch defaults) → LeakyReLU 0.1.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .conv import ConvNormAct
from .spp import same_max_pools

__all__ = ["darknet_conv", "DarknetBottleneck", "DarknetStage", "Darknet53", "SPP"]

# (output channels, residual blocks) of the five stride-2 stages (Table 1).
DARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def darknet_conv(cin: int, cout: int, k: int, stride: int = 1, act: str = "leaky_relu") -> ConvNormAct:
    """Darknet conv unit: conv (no bias) → BN → LeakyReLU(0.1)."""
    return ConvNormAct(cin, cout, k, stride, act=act)


class DarknetBottleneck(nn.Module):
    """Darknet residual block: 1×1 to C/2 → 3×3 back to C, added to the input when ``shortcut``.

    Shapes: ``N×C×H×W`` → ``N×C×H×W``.
    """

    def __init__(self, channels: int, shortcut: bool = True, act: str = "leaky_relu"):
        super().__init__()
        self.conv1 = darknet_conv(channels, channels // 2, 1, act=act)
        self.conv2 = darknet_conv(channels // 2, channels, 3, act=act)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class DarknetStage(nn.Module):
    """3×3 stride-2 conv from ``in_channels`` to ``out_channels`` followed by ``num_blocks``
    :class:`DarknetBottleneck`. Shapes: ``N×in×H×W`` → ``N×out×H/2×W/2``."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, act: str = "leaky_relu"):
        super().__init__()
        self.down = darknet_conv(in_channels, out_channels, 3, 2, act=act)
        self.blocks = nn.Sequential(*(DarknetBottleneck(out_channels, act=act) for _ in range(num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.down(x))


class Darknet53(nn.Module):
    """Darknet-53 backbone: 3×3 conv to 32, then five :class:`DarknetStage` (64×1, 128×2, 256×8,
    512×8, 1024×4 residual blocks).

    ``forward(x)`` ``N×3×H×W`` → ``[C3 N×256×H/8, C4 N×512×H/16, C5 N×1024×H/32]``.
    """

    def __init__(self, stages: Sequence[tuple[int, int]] = DARKNET53_STAGES, act: str = "leaky_relu"):
        super().__init__()
        self.stem = darknet_conv(3, 32, 3, act=act)
        cin, layers = 32, []
        for cout, n in stages:
            layers.append(DarknetStage(cin, cout, n, act=act))
            cin = cout
        self.stages = nn.ModuleList(layers)
        self.out_channels = [c for c, _ in stages[-3:]]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[-3:]


class SPP(nn.Module):
    """Parameter-free spatial pyramid pooling of YOLOv3-SPP: concat of the input and its stride-1
    max-pools with kernels 5, 9, 13. Shapes: ``N×C×H×W`` → ``N×4C×H×W``."""

    def __init__(self, kernels: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.kernels = tuple(kernels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, *same_max_pools(x, self.kernels)], 1)
