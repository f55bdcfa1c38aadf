"""Deformable convolution v1 in pure torch (Dai et al. 2017, "Deformable Convolutional Networks",
arXiv 1703.06211, §2.1), no compiled extension.

Semantics of the DCN im2col kernels (and ``torchvision.ops.deform_conv2d`` without mask): for
output position ``(y, x)`` and kernel tap ``k = i·kw + j``, input is sampled bilinearly at
``(y·s − p + i·d + Δy_k, x·s − p + j·d + Δx_k)``; corners outside the image count as zero. The
offset map has ``2·G·kh·kw`` channels ordered ``[group][tap][Δy, Δx]`` for ``G`` deformable groups
(each group of ``C/G`` input channels has its own offsets).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["deform_conv2d", "DeformConv2d"]


def _sample_columns(x: Tensor, offset: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """Bilinear samples ``N×C×K×Ho×Wo`` (K = kh·kw taps) at the offset kernel positions."""
    n, c, h, w = x.shape
    kh, kw = kernel
    k = kh * kw
    ho, wo = offset.shape[-2:]
    off = offset.reshape(n, groups, k, 2, ho, wo).to(x.dtype)
    dev, dt = x.device, x.dtype
    ky = (torch.arange(kh, device=dev, dtype=dt) * dilation[0]).repeat_interleave(kw)
    kx = (torch.arange(kw, device=dev, dtype=dt) * dilation[1]).repeat(kh)
    by = torch.arange(ho, device=dev, dtype=dt) * stride[0] - padding[0]
    bx = torch.arange(wo, device=dev, dtype=dt) * stride[1] - padding[1]
    py = by.view(1, 1, 1, ho, 1) + ky.view(1, 1, k, 1, 1) + off[:, :, :, 0]  # N×G×K×Ho×Wo
    px = bx.view(1, 1, 1, 1, wo) + kx.view(1, 1, k, 1, 1) + off[:, :, :, 1]
    # Pixel → normalised coordinates for align_corners=False: g = (2p + 1) / size − 1.
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), -1).reshape(n * groups, k * ho, wo, 2)
    sampled = F.grid_sample(x.reshape(n * groups, c // groups, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (N·G)×(C/G)×(K·Ho)×Wo
    return sampled.reshape(n, c, k, ho, wo)


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                  dilation=1, deformable_groups: int = 1) -> Tensor:
    """Deformable conv v1 (groups = 1).

    Args:
        x: ``N×C×H×W``; offset: ``N×(2·G·kh·kw)×Ho×Wo``; weight: ``O×C×kh×kw``; bias: ``O`` or None.
    Returns:
        ``N×O×Ho×Wo``.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    o, c, kh, kw = weight.shape
    if x.shape[1] != c:
        raise ValueError(f"input has {x.shape[1]} channels, weight expects {c}")
    if c % deformable_groups:
        raise ValueError(f"{c} channels are not divisible into {deformable_groups} deformable groups")
    if offset.shape[1] != 2 * deformable_groups * kh * kw:
        raise ValueError(f"offset needs {2 * deformable_groups * kh * kw} channels, got {offset.shape[1]}")
    cols = _sample_columns(x, offset, (kh, kw), stride, padding, dilation, deformable_groups)
    n, _, k, ho, wo = cols.shape
    out = torch.matmul(weight.reshape(o, c * k), cols.reshape(n, c * k, ho * wo)).reshape(n, o, ho, wo)
    return out if bias is None else out + bias.view(1, o, 1, 1)


class DeformConv2d(nn.Module):
    """Deformable 3×3 (or any ``kernel_size``) convolution taking its offsets as a second input.

    ``forward(x, offset)``: ``N×C×H×W``, ``N×(2·G·kh·kw)×Ho×Wo`` → ``N×O×Ho×Wo``. Parameters
    ``weight`` ``O×C×kh×kw`` and ``bias`` ``O`` (same names and init as the DCN module of ASFF).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, deformable_groups: int = 1, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             self.deformable_groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, deformable_groups={self.deformable_groups}")
