"""RTMDet heads (Lyu et al. 2022, arXiv 2212.07784, §3.1 "shared convs, separate BN", §3.3 masks).

Module attribute names follow the reference implementation (mmdetection ``RTMDetSepBNHead`` and
``RTMDetInsSepBNHead``) so that official weights map one to one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvNormAct
from ..layers.init import normal_convs_, prior_bias

__all__ = [
    "RTMDetSepBNHead", "RTMDetInsSepBNHead", "MaskFeatModule", "make_priors", "dynamic_mask_logits",
    "NUM_PROTOTYPES", "KERNEL_CHANNELS", "HEAD_STD", "PRIOR_PROB",
]

HEAD_STD = 0.01  # std of every head conv (mmdetection rtmdet_head.py / rtmdet_ins_head.py init_weights)
PRIOR_PROB = 0.01  # foreground prior of the class bias (mmengine bias_init_with_prob(0.01))

NUM_PROTOTYPES = 8  # mask prototypes P (= dynamic conv width D)
_DY_LAYERS = 3
# Dynamic conv shapes (out, in): (8, 8 prototypes + 2 coords), (8, 8), (1, 8) → 152 weights + 17 biases.
_DY_SHAPES = ((NUM_PROTOTYPES, NUM_PROTOTYPES + 2), (NUM_PROTOTYPES, NUM_PROTOTYPES), (1, NUM_PROTOTYPES))
KERNEL_CHANNELS = sum(o * i for o, i in _DY_SHAPES) + sum(o for o, _ in _DY_SHAPES)  # 169


def make_priors(feat_sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Anchor points of all levels, ``A×3`` rows (x, y, stride), at ``(j·s, i·s)`` (offset 0),
    row-major per level, levels concatenated (the order of ``permute(0, 2, 3, 1).reshape``)."""
    rows = []
    for (h, w), s in zip(feat_sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s
        xs = torch.arange(w, device=device, dtype=dtype) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        rows.append(torch.stack((xx.reshape(-1), yy.reshape(-1), torch.full_like(xx.reshape(-1), s)), 1))
    return torch.cat(rows, 0)


def _tower(in_channels: int, feat_channels: int, stacked_convs: int) -> nn.ModuleList:
    return nn.ModuleList(
        ConvNormAct(in_channels if i == 0 else feat_channels, feat_channels, 3) for i in range(stacked_convs)
    )


def _run(tower: nn.ModuleList, x: Tensor) -> Tensor:
    for layer in tower:
        x = layer(x)
    return x


def _share_convs(towers: nn.ModuleList) -> None:
    """Share the conv of every level with level 0; BatchNorms stay per level (RTMDet §3.1)."""
    for level in towers[1:]:
        for i, layer in enumerate(level):
            layer.conv = towers[0][i].conv


class RTMDetSepBNHead(nn.Module):
    """RTMDet §3.1 detection head: per level a cls tower and a reg tower of ``stacked_convs`` 3×3
    ConvNormAct (convs shared across levels, BN per level), then per-level 1×1 predictors.

    ``forward(feats)`` with ``feats[l]`` ``N×in×H_l×W_l`` returns ``(cls, box)`` lists:
    ``cls[l]`` ``N×C×H_l×W_l`` logits; ``box[l]`` ``N×4×H_l×W_l`` distances (l, t, r, b) in input
    pixels: ``pred·stride``, or ``exp(pred)·stride`` when ``exp_on_reg`` (sizes l and x).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, strides: Sequence[int] = (8, 16, 32),
                 stacked_convs: int = 2, exp_on_reg: bool = False):
        super().__init__()
        self.strides = tuple(strides)
        self.exp_on_reg = exp_on_reg
        self.cls_convs = nn.ModuleList(_tower(in_channels, feat_channels, stacked_convs) for _ in self.strides)
        self.reg_convs = nn.ModuleList(_tower(in_channels, feat_channels, stacked_convs) for _ in self.strides)
        self.rtm_cls = nn.ModuleList(nn.Conv2d(feat_channels, num_classes, 1) for _ in self.strides)
        self.rtm_reg = nn.ModuleList(nn.Conv2d(feat_channels, 4, 1) for _ in self.strides)
        _share_convs(self.cls_convs)
        _share_convs(self.reg_convs)
        self.init_weights()

    def init_weights(self, reg_bias: float = 0.0) -> None:
        """As mmdetection ``RTMDetSepBNHead.init_weights`` (``mmdet/models/dense_heads/rtmdet_head.py``;
        RTMDet-Ins: ``rtmdet_ins_head.py``, ``reg_bias`` 1): every Conv2d of the head (towers,
        predictors, mask branch) N(0, 0.01) with bias 0; BN γ 1, β 0; class bias −log((1−π)/π)
        with prior π = 0.01 (σ(bias) = 0.01, Focal Loss §4.1); box bias ``reg_bias``."""
        normal_convs_(self, std=HEAD_STD, bias=0.0)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for conv in self.rtm_cls:
            nn.init.constant_(conv.bias, prior_bias(PRIOR_PROB))
        for conv in self.rtm_reg:
            nn.init.constant_(conv.bias, reg_bias)

    def _box(self, idx: int, reg_feat: Tensor) -> Tensor:
        pred = self.rtm_reg[idx](reg_feat)
        return (pred.exp() if self.exp_on_reg else pred) * self.strides[idx]

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cls_out, box_out = [], []
        for idx, x in enumerate(feats):
            cls_out.append(self.rtm_cls[idx](_run(self.cls_convs[idx], x)))
            box_out.append(self._box(idx, _run(self.reg_convs[idx], x)))
        return cls_out, box_out


class MaskFeatModule(nn.Module):
    """RTMDet-Ins §3.3 mask feature branch: P4, P5 bilinearly resized to P3; concat (3C);
    1×1 fusion conv (bias, 3C→C); ``stacked_convs`` × 3×3 ConvNormAct; 1×1 projection to 8
    prototypes. Shapes: levels ``N×C×H_l×W_l`` → ``N×8×H_3×W_3`` (stride 8)."""

    def __init__(self, in_channels: int, feat_channels: int, num_levels: int = 3, stacked_convs: int = 4,
                 num_prototypes: int = NUM_PROTOTYPES):
        super().__init__()
        self.fusion_conv = nn.Conv2d(num_levels * in_channels, in_channels, 1)
        self.stacked_convs = nn.Sequential(*(
            ConvNormAct(in_channels if i == 0 else feat_channels, feat_channels, 3) for i in range(stacked_convs)
        ))
        self.projection = nn.Conv2d(feat_channels, num_prototypes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        fused = [feats[0]] + [
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]
        ]
        return self.projection(self.stacked_convs(self.fusion_conv(torch.cat(fused, 1))))


class RTMDetInsSepBNHead(RTMDetSepBNHead):
    """RTMDet-Ins §3.3 head: the detection head plus a per-level kernel tower (not shared)
    predicting 169 dynamic-conv parameters, and :class:`MaskFeatModule`.

    Faithful to the reference: the *reg tower is the cls tower* (same modules, as in the released
    models, whose parameter counts only match with this sharing; it runs twice per level);
    boxes are ``ReLU(pred)·stride``.
    ``forward`` returns ``(cls, box, kernel, mask_feat)``: ``kernel[l]`` ``N×169×H_l×W_l``,
    ``mask_feat`` ``N×8×H_3×W_3``.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int, strides: Sequence[int] = (8, 16, 32),
                 stacked_convs: int = 2):
        nn.Module.__init__(self)
        self.strides = tuple(strides)
        self.exp_on_reg = False
        self.cls_convs = nn.ModuleList(_tower(in_channels, feat_channels, stacked_convs) for _ in self.strides)
        self.reg_convs = self.cls_convs
        self.kernel_convs = nn.ModuleList(_tower(in_channels, feat_channels, stacked_convs) for _ in self.strides)
        self.rtm_cls = nn.ModuleList(nn.Conv2d(feat_channels, num_classes, 1) for _ in self.strides)
        self.rtm_reg = nn.ModuleList(nn.Conv2d(feat_channels, 4, 1) for _ in self.strides)
        self.rtm_kernel = nn.ModuleList(nn.Conv2d(feat_channels, KERNEL_CHANNELS, 1) for _ in self.strides)
        _share_convs(self.cls_convs)
        self.mask_head = MaskFeatModule(in_channels, feat_channels, len(self.strides))
        self.init_weights(reg_bias=1.0)

    def _box(self, idx: int, reg_feat: Tensor) -> Tensor:
        return F.relu(self.rtm_reg[idx](reg_feat)) * self.strides[idx]

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        mask_feat = self.mask_head(feats)
        cls_out, box_out, kernel_out = [], [], []
        for idx, x in enumerate(feats):
            cls_feat = _run(self.cls_convs[idx], x)
            cls_out.append(self.rtm_cls[idx](cls_feat))
            kernel_out.append(self.rtm_kernel[idx](_run(self.kernel_convs[idx], x)))
            # The reg tower is the cls tower, run a second time as the reference does (same result;
            # BN running statistics are updated twice in training; counted twice in MACs).
            box_out.append(self._box(idx, _run(self.reg_convs[idx], x)))
        return cls_out, box_out, kernel_out, mask_feat


def _split_kernels(kernels: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``K×169`` → per-layer grouped-conv weights ``(K·out)×in×1×1`` and biases ``K·out``
    (layout: all weights [80, 64, 8], then all biases [8, 8, 1])."""
    k = kernels.shape[0]
    w_sizes = [o * i for o, i in _DY_SHAPES]
    b_sizes = [o for o, _ in _DY_SHAPES]
    parts = torch.split(kernels, w_sizes + b_sizes, dim=1)
    weights = [p.reshape(k * o, i, 1, 1) for p, (o, i) in zip(parts[:_DY_LAYERS], _DY_SHAPES)]
    biases = [p.reshape(k * o) for p, (o, _) in zip(parts[_DY_LAYERS:], _DY_SHAPES)]
    return weights, biases


def dynamic_mask_logits(mask_feat: Tensor, kernels: Tensor, priors: Tensor, mask_stride: int = 8) -> Tensor:
    """RTMDet-Ins §3.3 dynamic convolution: per instance, three 1×1 convs (ReLU between) over
    [relative coords (2), prototypes (8)].

    Args:
        mask_feat: ``8×h×w`` prototypes of one image (stride ``mask_stride``).
        kernels: ``K×169`` dynamic parameters; priors: ``K×3`` (x, y, stride) of the instances.
    Returns:
        ``K×h×w`` mask logits at stride ``mask_stride``. Relative coordinates are
        (prior point − grid point) / (8 · prior stride).
    """
    k = kernels.shape[0]
    h, w = mask_feat.shape[-2:]
    if k == 0:
        return mask_feat.new_zeros((0, h, w))
    grid = make_priors([(h, w)], [mask_stride], mask_feat.device, mask_feat.dtype)[:, :2]  # hw×2
    rel = (priors[:, None, :2].to(grid.dtype) - grid[None]) / (priors[:, None, 2:3].to(grid.dtype) * 8)
    rel = rel.permute(0, 2, 1).reshape(k, 2, h, w)
    x = torch.cat((rel, mask_feat[None].expand(k, -1, -1, -1)), 1).reshape(1, -1, h, w)
    weights, biases = _split_kernels(kernels)
    for i, (wt, b) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, wt.to(x.dtype), b.to(x.dtype), groups=k)
        if i < _DY_LAYERS - 1:
            x = F.relu(x)
    return x.reshape(k, h, w)
