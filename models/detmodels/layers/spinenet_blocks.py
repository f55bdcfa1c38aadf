"""SpineNet building blocks (Du et al. 2020, "SpineNet: Learning Scale-Permuted Backbone for
Recognition and Localization", arXiv 1912.05027, §3.1 and §3.3).

* :class:`BottleneckBlock` / :class:`ResidualBlock`: the two block types of the search space
  (ResNet bottleneck 1×1–3×3–1×1 with 4× expansion, and the basic 3×3–3×3 block), with optional
  stochastic depth on the residual branch.
* :class:`Resample`: the cross-scale resampling path of §3.1 (1×1 to ``α·C``, strided 3×3 conv
  plus max-pools down or nearest up, 1×1 to the target width without activation).
* :class:`ScalePermutedBlock`: resample the two parents (plus any merged zero-out-degree blocks),
  sum, activate and run the block group.

Norm and activation follow the reference RetinaNet configs: BatchNorm with PyTorch momentum 0.01
(TF 0.99) and eps 1e-3, swish; convolutions have no bias.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct, make_act

__all__ = [
    "StochasticDepth", "BottleneckBlock", "ResidualBlock", "BlockGroup", "Resample", "ScalePermutedBlock",
    "block_out_channels", "BN_MOMENTUM", "BN_EPS",
]

BN_MOMENTUM = 0.01
BN_EPS = 1e-3
BOTTLENECK_EXPANSION = 4


def block_out_channels(block_type: str, filters: int) -> int:
    """Output width of a block: ``4·filters`` for a bottleneck, ``filters`` for a residual block."""
    return filters * BOTTLENECK_EXPANSION if block_type == "bottleneck" else filters


def _cna(cin: int, cout: int, k: int, stride: int = 1, act: str | None = "swish") -> ConvNormAct:
    return ConvNormAct(cin, cout, k, stride, act=act, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)


class StochasticDepth(nn.Module):
    """Drop the whole residual branch per sample with probability ``rate`` during training
    (Huang et al. 2016; TF "drop connect"); survivors are scaled by ``1 / (1 − rate)``.

    Shapes: ``N×C×H×W`` → same. Identity in eval mode or when ``rate == 0``.
    """

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class _ResNetBlock(nn.Module):
    """What both block types share: ``act(drop(branch(x)) + shortcut(x))``; a subclass registers
    its convs, then :meth:`_add_shortcut`, and defines :meth:`branch`."""

    def _add_shortcut(self, in_channels: int, out_channels: int, stride: int, projection: bool, act: str,
                      drop_rate: float) -> None:
        """The 1×1 conv + BN shortcut (``projection``, else identity), stochastic depth and activation."""
        self.shortcut = _cna(in_channels, out_channels, 1, stride, act=None) if projection else None
        self.drop = StochasticDepth(drop_rate)
        self.act = make_act(act)

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.drop(self.branch(x)) + identity)


class BottleneckBlock(_ResNetBlock):
    """ResNet bottleneck (SpineNet §3.1 block type "bottleneck"): 1×1 f → 3×3 f (stride) → 1×1 4f,
    BN after each, activation after the first two and after the residual add.

    Shapes: ``N×in×H×W`` → ``N×4f×H/s×W/s``. ``projection`` adds a 1×1 conv + BN shortcut.
    """

    def __init__(self, in_channels: int, filters: int, stride: int = 1, *, projection: bool = False,
                 act: str = "swish", drop_rate: float = 0.0):
        super().__init__()
        out = filters * BOTTLENECK_EXPANSION
        self.conv1 = _cna(in_channels, filters, 1, act=act)
        self.conv2 = _cna(filters, filters, 3, stride, act=act)
        self.conv3 = _cna(filters, out, 1, act=None)
        self._add_shortcut(in_channels, out, stride, projection, act, drop_rate)

    def branch(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class ResidualBlock(_ResNetBlock):
    """ResNet basic block (SpineNet §3.1 block type "residual"): 3×3 f (stride) → 3×3 f, BN after
    each, activation after the first and after the residual add.

    Shapes: ``N×in×H×W`` → ``N×f×H/s×W/s``. ``projection`` adds a 1×1 conv + BN shortcut.
    """

    def __init__(self, in_channels: int, filters: int, stride: int = 1, *, projection: bool = False,
                 act: str = "swish", drop_rate: float = 0.0):
        super().__init__()
        self.conv1 = _cna(in_channels, filters, 3, stride, act=act)
        self.conv2 = _cna(filters, filters, 3, act=None)
        self._add_shortcut(in_channels, filters, stride, projection, act, drop_rate)

    def branch(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


_BLOCKS = {"bottleneck": BottleneckBlock, "residual": ResidualBlock}


class BlockGroup(nn.Sequential):
    """``repeats`` blocks of one type (SpineNet §3.3 "block repeats"); only the first may project,
    and it does so when the input width differs from the block's output width.

    Shapes: ``N×in×H×W`` → ``N×block_out_channels(type, filters)×H×W``.
    """

    def __init__(self, in_channels: int, filters: int, block_type: str, repeats: int = 1, *,
                 act: str = "swish", drop_rate: float = 0.0):
        if block_type not in _BLOCKS:
            raise ValueError(f"unknown SpineNet block type {block_type!r}; expected one of {sorted(_BLOCKS)}")
        block = _BLOCKS[block_type]
        out = block_out_channels(block_type, filters)
        layers = [block(in_channels, filters, projection=in_channels != out, act=act, drop_rate=drop_rate)]
        layers += [block(out, filters, act=act, drop_rate=drop_rate) for _ in range(1, repeats)]
        super().__init__(*layers)
        self.out_channels = out


class Resample(nn.Module):
    """SpineNet §3.1 cross-scale resampling of one parent to a target level and width.

    1×1 conv to ``int(C′·α)`` (``C′ = C/4`` for bottleneck parents) + BN + act; going down: a 3×3
    stride-2 conv + BN + act, then 3×3 stride-2 max-pools until the target level; going up:
    nearest upsampling to the target size; finally a 1×1 conv to ``target_channels`` + BN (no act).

    ``forward(x, size)``: ``N×in×H×W`` → ``N×target_channels×size``. ``size`` is the target level's
    spatial size, ``ceil(input / 2^level)``.
    """

    def __init__(self, in_channels: int, in_block_type: str, in_level: int, target_channels: int,
                 target_level: int, alpha: float, *, act: str = "swish"):
        super().__init__()
        base = in_channels // BOTTLENECK_EXPANSION if in_block_type == "bottleneck" else in_channels
        mid = int(base * alpha)
        self.reduce = _cna(in_channels, mid, 1, act=act)
        self.down = _cna(mid, mid, 3, 2, act=act) if target_level > in_level else None
        self.num_pools = max(target_level - in_level - 1, 0)
        self.expand = _cna(mid, target_channels, 1, act=None)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        x = self.reduce(x)
        if self.down is not None:
            x = self.down(x)
            for _ in range(self.num_pools):
                x = F.max_pool2d(x, 3, 2, 1)
        elif tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(int(s) for s in size), mode="nearest")
        return self.expand(x)


class ScalePermutedBlock(nn.Module):
    """One block of the scale-permuted network (SpineNet §3.1): two parents resampled to this
    block's level and width, summed with any merged zero-out-degree blocks (outputs only), then
    activation and a :class:`BlockGroup`.

    ``forward(parents, merged, size)``: parents ``[N×C_p×H_p×W_p]`` (two), merged maps already at
    this block's shape → ``N×out_channels×size``.
    """

    def __init__(self, parents: Sequence[tuple[int, str, int]], level: int, block_type: str, filters: int,
                 repeats: int, alpha: float, *, act: str = "swish", drop_rate: float = 0.0):
        super().__init__()
        self.level, self.block_type = level, block_type
        out = block_out_channels(block_type, filters)
        self.resample = nn.ModuleList(
            Resample(c, t, lv, out, level, alpha, act=act) for c, t, lv in parents)
        self.act = make_act(act)
        self.blocks = BlockGroup(out, filters, block_type, repeats, act=act, drop_rate=drop_rate)
        self.out_channels = out

    def forward(self, parents: Sequence[Tensor], merged: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        x = self.resample[0](parents[0], size)
        for r, p in zip(self.resample[1:], parents[1:]):
            x = x + r(p, size)
        for m in merged:
            x = x + m
        return self.blocks(self.act(x))
