"""SpineNet with RetinaNet (Du et al. 2020, "SpineNet: Learning Scale-Permuted Backbone for
Recognition and Localization", arXiv 1912.05027; RetinaNet: Lin et al. 2017, arXiv 1708.02002).

The backbone is *data*: a :class:`~detmodels.families.spinenet_spec.SpineNetSpec` (block list)
plus :class:`~detmodels.families.spinenet_spec.ScaleSettings` (§3.3 scaling). ``create_model``
builds the published variants (``spinenet_49s`` … ``spinenet_190``) or any valid spec::

    >>> import detmodels
    >>> m = detmodels.create_model("spinenet", num_classes=3, spec="my_spec.yaml")  # doctest: +SKIP

Options (:class:`SpineNetOptions`): ``backbone`` (:class:`SpineNetBackboneOptions`: scale settings,
stochastic depth, activation), ``head`` (:class:`RetinaNetHeadOptions`), ``assigner``
(:class:`MaxIoUOptions`); SpineNet has no neck. The ``spinenet`` entry also takes ``spec=``.

SpineNet-49S endpoint width: we follow the code's SCALING_MAP (128-d endpoints, 11.27 M params with
91 classes). The model zoo's 11.9 M is reached with
``backbone=SpineNetBackboneOptions(endpoints_num_filters=256)`` on top of the variant's defaults
(the head stays 128 wide unless ``head.num_filters`` says otherwise).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..assigners import MaxIoUAssigner
from ..base import Detector, RawOutputs
from ..layers import ConvNormAct, make_act
from ..layers.init import prior_bias, set_bn_, variance_scaling_convs_
from ..layers.spinenet_blocks import BN_EPS, BN_MOMENTUM, BlockGroup, ScalePermutedBlock, block_out_channels
from ..ops import float32_guard, huber_loss, sigmoid_focal_loss
from ..structures import Detections, InputSpec, Target
from .spinenet_options import (SPINENET_VARIANTS, MaxIoUOptions, RetinaNetHeadOptions, SpineNetBackboneOptions,
                               SpineNetOptions, SpineNetVariant)
from .spinenet_spec import (
    NUM_STEM_BLOCKS, ScaleSettings, SpineNetSpec, load_spec, merged_into, spec_from_dict, spinenet49_spec,
    validate_spec,
)

__all__ = [
    "SpineNet", "RetinaNetHead", "RetinaNet", "SpineNetVariant", "SPINENET_VARIANTS", "build_spinenet",
    "build_spinenet_variant", "spinenet_from_spec",
    "resolve_spec", "generate_anchors", "encode_boxes", "decode_boxes", "SpineNetOptions", "SpineNetBackboneOptions",
    "RetinaNetHeadOptions", "MaxIoUOptions", "init_spinenet_",
]

# ImageNet mean/std on RGB, 0–255 scale (TF vision input pipeline). The TF parser pads with 0 after
# normalising, i.e. with the mean colour: pad_value 114 is its nearest grey.
SPINENET_INPUT_SPEC = InputSpec(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB",
                                pad_value=114.0)
# Base filters per level before filter_size_scale (TF FILTER_SIZE_MAP).
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}
STEM_CHANNELS = 64
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


@torch.no_grad()
def init_spinenet_(backbone: nn.Module) -> None:
    """The backbone's init as tensorflow/models has it (``official/vision/modeling/backbones/
    spinenet.py``: every ``Conv2D`` of the stem, block groups, resampling and endpoints takes
    ``kernel_initializer="VarianceScaling"``, i.e. Keras' truncated normal with std √(1/fan_in), no
    bias; ``norm_momentum`` 0.99 and ``norm_epsilon`` 1e-3 of ``NormActivation`` in
    ``official/vision/configs/common.py``, used by the RetinaNet SpineNet experiments).

    PyTorch keeps γ = 1, β = 0 (Keras' ``BatchNormalization`` defaults; TF's blocks use no zero-γ).
    The authors' original tensorflow/tpu code uses the same ``variance_scaling_initializer()`` for its
    convs but BN momentum 0.997 / eps 1e-4 in its RetinaNet configs (``configs/base_config.py``); we
    follow the Model Garden. Loading weights afterwards overwrites all of this.
    """
    variance_scaling_convs_(backbone, scale=1.0, mode="fan_in")
    set_bn_(backbone, eps=BN_EPS, momentum=BN_MOMENTUM, reset_affine=True)


def _filters(level: int, scale: float) -> int:
    """Block filters at ``level``: ``int(FILTER_SIZE_MAP[level] · scale)`` (levels above 7: 256 base)."""
    return int(FILTER_SIZE_MAP.get(level, FILTER_SIZE_MAP[7]) * scale)


class SpineNet(nn.Module):
    """Scale-permuted backbone (§3.1): stem (7×7/2 conv 64 → BN → act → 3×3/2 max-pool), two L2
    bottleneck block groups, the :class:`ScalePermutedBlock` list of ``spec``, and 1×1 endpoint
    convs (``endpoints_num_filters``) on the output blocks L{min}–L{max} (no FPN).

    ``forward(x)`` ``N×3×H×W`` → ``[N×E×⌈H/2^l⌉×⌈W/2^l⌉ for l in min_level..max_level]``.
    Initialised by :func:`init_spinenet_` (TF Model Garden's VarianceScaling convs, BN 1e-3 / 0.01).
    """

    def __init__(self, spec: SpineNetSpec, scale: ScaleSettings, *, act: str = "swish",
                 stochastic_depth_rate: float = 0.2):
        super().__init__()
        validate_spec(spec)
        self.spec = dataclasses.replace(spec, scale=scale)  # the spec as built (YAML round trip)
        self.scale = scale
        self.levels = list(range(spec.min_level, spec.max_level + 1))
        self.stem = ConvNormAct(3, STEM_CHANNELS, 7, 2, act=act, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)
        self.stem_pool = nn.MaxPool2d(3, 2, 1)
        f2 = _filters(2, scale.filter_size_scale)
        self.stem_blocks = nn.ModuleList()
        widths, cin = [], STEM_CHANNELS
        for _ in range(NUM_STEM_BLOCKS):
            self.stem_blocks.append(BlockGroup(cin, f2, "bottleneck", scale.block_repeats, act=act))
            cin = block_out_channels("bottleneck", f2)
            widths.append(cin)
        self.blocks = nn.ModuleList()
        n = len(spec.blocks)
        for i, b in enumerate(spec.blocks):
            parents = [(widths[p], spec.block(p).block_type, spec.block(p).level) for p in b.inputs]
            blk = ScalePermutedBlock(parents, b.level, b.block_type, _filters(b.level, scale.filter_size_scale),
                                     scale.block_repeats, scale.resample_alpha, act=act,
                                     drop_rate=stochastic_depth_rate * (i + 1) / n)
            self.blocks.append(blk)
            widths.append(blk.out_channels)
        self._merged = merged_into(spec)
        self._outputs = {spec.block(k).level: k for k in self._merged}
        self.endpoints = nn.ModuleList(
            ConvNormAct(widths[self._outputs[lv]], scale.endpoints_num_filters, 1, act=act, bn_eps=BN_EPS,
                        bn_momentum=BN_MOMENTUM) for lv in self.levels)
        self.out_channels = [scale.endpoints_num_filters] * len(self.levels)
        init_spinenet_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        h, w = x.shape[-2:]
        feats = []
        x = self.stem_pool(self.stem(x))
        for group in self.stem_blocks:
            x = group(x)
            feats.append(x)
        for i, blk in enumerate(self.blocks):
            k = i + NUM_STEM_BLOCKS
            b = self.spec.blocks[i]
            size = (-(-h // 2**b.level), -(-w // 2**b.level))
            merged = [feats[j] for j in self._merged.get(k, ())]
            feats.append(blk([feats[p] for p in b.inputs], merged, size))
        return [conv(feats[self._outputs[lv]]) for conv, lv in zip(self.endpoints, self.levels)]


class RetinaNetHead(nn.Module):
    """RetinaNet head (Lin et al. 2017 §4, TF ``RetinaNetHead``): class and box towers of
    ``num_convs`` 3×3 convs (with bias) shared across levels, BN separate per level, then act;
    3×3 predictors shared across levels.

    ``forward(feats)``: ``[N×in×H_l×W_l]`` → ``(cls, box)``: ``cls[l]`` ``N×(A·C)×H_l×W_l`` logits
    (channel ``a·C + c``), ``box[l]`` ``N×(A·4)×H_l×W_l`` (channel ``a·4 + (dy, dx, dh, dw)``).
    """

    def __init__(self, num_classes: int, in_channels: int, num_filters: int, num_convs: int, num_levels: int,
                 num_anchors: int = 9, *, act: str = "swish", prior_prob: float = 0.01):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        chans = [in_channels] + [num_filters] * num_convs
        self.cls_convs = nn.ModuleList(nn.Conv2d(chans[i], num_filters, 3, 1, 1) for i in range(num_convs))
        self.box_convs = nn.ModuleList(nn.Conv2d(chans[i], num_filters, 3, 1, 1) for i in range(num_convs))
        self.cls_norms = nn.ModuleList(self._norms(num_filters, num_convs) for _ in range(num_levels))
        self.box_norms = nn.ModuleList(self._norms(num_filters, num_convs) for _ in range(num_levels))
        self.cls_pred = nn.Conv2d(num_filters, num_classes * num_anchors, 3, 1, 1)
        self.box_pred = nn.Conv2d(num_filters, 4 * num_anchors, 3, 1, 1)
        self.act = make_act(act)
        self._init_weights(prior_prob)

    @staticmethod
    def _norms(channels: int, n: int) -> nn.ModuleList:
        return nn.ModuleList(nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM) for _ in range(n))

    @torch.no_grad()
    def _init_weights(self, prior_prob: float) -> None:
        """TF Model Garden ``RetinaNetHead.build`` (tensorflow/models
        ``official/vision/modeling/heads/dense_prediction_heads.py``): tower convs N(0, 0.01) with
        zero bias, class and box predictors N(0, 1e-5), class bias ``-log((1 - π)/π)`` (π = 0.01),
        box bias 0; every BN eps 1e-3 and Keras momentum 0.99 (PyTorch 0.01), γ = 1, β = 0."""
        for conv in [*self.cls_convs, *self.box_convs]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        for conv in (self.cls_pred, self.box_pred):
            nn.init.normal_(conv.weight, std=1e-5)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_pred.bias, prior_bias(prior_prob))
        set_bn_(self, eps=BN_EPS, momentum=BN_MOMENTUM, reset_affine=True)

    def _tower(self, x: Tensor, convs: nn.ModuleList, norms: nn.ModuleList) -> Tensor:
        for conv, norm in zip(convs, norms):
            x = self.act(norm(conv(x)))
        return x

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cls, box = [], []
        for lv, x in enumerate(feats):
            cls.append(self.cls_pred(self._tower(x, self.cls_convs, self.cls_norms[lv])))
            box.append(self.box_pred(self._tower(x, self.box_convs, self.box_norms[lv])))
        return cls, box


def generate_anchors(feat_sizes: Sequence[tuple[int, int]], strides: Sequence[int], anchor_size: float,
                     num_scales: int = 3, aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5),
                     device: torch.device | str = "cpu") -> Tensor:
    """RetinaNet anchors, ``A×4`` xyxy input pixels, ordered level → row → column → (scale, ratio).

    Per location: ``anchor_size·stride·2^(s/num_scales)`` base size, width ``base·√r`` and height
    ``base/√r`` (``r`` = w/h), centred at ``((j + ½)·stride, (i + ½)·stride)`` (TF anchor generator).
    """
    out = []
    for (h, w), s in zip(feat_sizes, strides):
        wh = [(anchor_size * s * 2 ** (k / num_scales) * math.sqrt(r), anchor_size * s * 2 ** (k / num_scales)
               / math.sqrt(r)) for k in range(num_scales) for r in aspect_ratios]
        wh_t = torch.tensor(wh, dtype=torch.float32, device=device)  # K×2
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        ctr = torch.stack((cx, cy), -1).reshape(-1, 1, 2)
        out.append(torch.cat((ctr - wh_t / 2, ctr + wh_t / 2), -1).reshape(-1, 4))
    return torch.cat(out, 0)


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Faster R-CNN box coding without scale factors, TF order ``(dy, dx, dh, dw)`` (``…×4``)."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
    w, h = (boxes[..., 2] - boxes[..., 0]).clamp(min=1e-6), (boxes[..., 3] - boxes[..., 1]).clamp(min=1e-6)
    x, y = boxes[..., 0] + w / 2, boxes[..., 1] + h / 2
    return torch.stack(((y - ay) / ah, (x - ax) / aw, torch.log(h / ah), torch.log(w / aw)), -1)


def decode_boxes(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_boxes` (dh, dw clipped at log(1000/16)); returns xyxy ``…×4``."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
    dy, dx, dh, dw = deltas.unbind(-1)
    y, x = dy * ah + ay, dx * aw + ax
    h, w = dh.clamp(max=BBOX_XFORM_CLIP).exp() * ah, dw.clamp(max=BBOX_XFORM_CLIP).exp() * aw
    return torch.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), -1)


def _flatten(maps: Sequence[Tensor], per_anchor: int) -> Tensor:
    """Per-level ``N×(A·K)×H×W`` → ``N×(ΣH·W·A)×K`` (row, column, anchor order)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, per_anchor) for m in maps], 1)


class RetinaNet(Detector):
    """SpineNet + RetinaNet detector (arXiv 1912.05027 §4.1; RetinaNet §4).

    ``forward(images)`` → ``{"cls": [N×(9·C)×H_l×W_l], "box": [N×(9·4)×H_l×W_l]}`` for L3–L7.
    Loss: :class:`MaxIoUAssigner` (IoU 0.5, every GT force-matched), sigmoid focal loss summed and
    divided by (#positives + 1), Huber box loss on the encoded deltas divided by 4·(#positives + 1),
    weighted 50. ``num_classes`` counts foreground classes only (the TF configs' 91 includes a
    background channel 0; build with 91 to reproduce the published parameter counts).
    """

    family = "spinenet"
    task = "bbox"
    input_spec = SPINENET_INPUT_SPEC

    def __init__(self, spec: SpineNetSpec, scale: ScaleSettings, num_classes: int = 80, *, head_convs: int = 4,
                 head_filters: int | None = None, anchor_size: float = 3.0, num_scales: int = 3,
                 aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5), act: str = "swish",
                 stochastic_depth_rate: float = 0.2, assigner: MaxIoUAssigner | None = None,
                 loss: RetinaNetHeadOptions | None = None, pre_nms_topk: int = 5000):
        levels = range(spec.min_level, spec.max_level + 1)
        super().__init__(num_classes, [2**lv for lv in levels])
        self.backbone = SpineNet(spec, scale, act=act, stochastic_depth_rate=stochastic_depth_rate)
        self.anchor_size, self.num_scales, self.aspect_ratios = anchor_size, num_scales, tuple(aspect_ratios)
        self.num_anchors = num_scales * len(self.aspect_ratios)
        self.head = RetinaNetHead(num_classes, scale.endpoints_num_filters, head_filters or
                                  scale.endpoints_num_filters, head_convs, len(levels), self.num_anchors, act=act)
        self.assigner = assigner or MaxIoUAssigner(0.5, 0.5, force_match=True)
        self.loss_cfg = loss or RetinaNetHeadOptions()  # its focal_*, huber_delta, box_loss_weight
        self.pre_nms_topk = pre_nms_topk

    def forward(self, images: Tensor) -> RawOutputs:
        cls, box = self.head(self.backbone(images))
        return {"cls": cls, "box": box}

    def anchors(self, outputs: RawOutputs) -> Tensor:
        """All anchors of ``outputs``' feature sizes, ``A×4`` xyxy input pixels."""
        sizes = [tuple(m.shape[-2:]) for m in outputs["cls"]]
        return generate_anchors(sizes, self.strides, self.anchor_size, self.num_scales, self.aspect_ratios,
                                outputs["cls"][0].device)

    def decode(self, outputs: RawOutputs) -> tuple[Tensor, Tensor]:
        """Boxes ``N×A×4`` (xyxy input px) and sigmoid scores ``N×A×C``, A = Σ H·W·9."""
        anchors = self.anchors(outputs)
        boxes = decode_boxes(_flatten(outputs["box"], 4).float(), anchors[None])
        return boxes, _flatten(outputs["cls"], self.num_classes).float().sigmoid()

    def postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.05,
                    nms_iou: float = 0.5, max_det: int = 100,
                    scale_factors: Sequence[float] | None = None) -> list[Detections]:
        """Reference settings: score 0.05, top 5000 before NMS, NMS IoU 0.5, 100 detections."""
        return self._dense_postprocess(outputs, image_sizes, score_thr, nms_iou, max_det, scale_factors,
                                       pre_nms_topk=self.pre_nms_topk)

    def _targets(self, anchors: Tensor, targets: Sequence[Target], device: torch.device) -> tuple[Tensor, ...]:
        """Per image matching → class targets ``N×A×C``, valid mask ``N×A`` (not ignored), positive
        mask ``N×A`` and box deltas ``N×A×4``."""
        cls_t, valid, pos, box_t = [], [], [], []
        for t in targets:
            gt_boxes = t["boxes"].to(device).float().reshape(-1, 4)
            gt_labels = t["labels"].to(device).long().reshape(-1)
            res = self.assigner.assign(anchors, gt_boxes)
            p = res.positive
            onehot = anchors.new_zeros(anchors.shape[0], self.num_classes)
            onehot[p, gt_labels[res.gt_index[p]]] = 1.0
            matched = gt_boxes[res.gt_index.clamp(min=0)] if len(gt_boxes) else anchors
            cls_t.append(onehot)
            valid.append(res.gt_index != -2)
            pos.append(p)
            box_t.append(encode_boxes(matched, anchors))
        return torch.stack(cls_t), torch.stack(valid), torch.stack(pos), torch.stack(box_t)

    @float32_guard
    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_box"}`` (RetinaNet focal + weighted Huber, TF normalisation), in float32."""
        logits = _flatten(outputs["cls"], self.num_classes).float()
        deltas = _flatten(outputs["box"], 4).float()
        anchors = self.anchors(outputs)
        cls_t, valid, pos, box_t = self._targets(anchors, targets, logits.device)
        cfg = self.loss_cfg
        normalizer = pos.sum().float() + 1.0
        focal = sigmoid_focal_loss(logits, cls_t, float(cfg.focal_alpha), float(cfg.focal_gamma))
        loss_cls = (focal * valid[..., None]).sum() / normalizer
        huber = huber_loss(deltas[pos], box_t[pos], float(cfg.huber_delta))
        loss_box = huber.sum() / (4.0 * normalizer) + deltas.sum() * 0
        return {"loss_cls": loss_cls, "loss_box": float(cfg.box_loss_weight) * loss_box}


# ---------------------------------------------------------------------- builders
def resolve_spec(spec: str | Path | Mapping[str, Any] | SpineNetSpec | None) -> SpineNetSpec:
    """A spec from a YAML path, a dict (the YAML form) or a :class:`SpineNetSpec`; ``None`` → SpineNet-49."""
    if spec is None:
        return spinenet49_spec()
    if isinstance(spec, SpineNetSpec):
        return validate_spec(spec)
    if isinstance(spec, Mapping):
        return spec_from_dict(dict(spec))
    if isinstance(spec, (str, Path)):
        return load_spec(spec)
    raise TypeError(f"spec must be a path, a dict or a SpineNetSpec, got {type(spec).__name__}")


def build_spinenet(spec: SpineNetSpec, base_scale: ScaleSettings, num_classes: int = 80, *,
                   options: SpineNetOptions) -> RetinaNet:
    """Build a SpineNet-RetinaNet from a block ``spec``, the scale settings the options' unset
    (``null``) backbone fields fall back to, and typed ``options``."""
    bb, hd, asg = options.backbone, options.head, options.assigner
    scale = bb.scale(base_scale)
    return RetinaNet(
        spec, scale, num_classes, head_convs=hd.num_convs, head_filters=hd.num_filters or scale.endpoints_num_filters,
        anchor_size=float(hd.anchor_size), num_scales=hd.num_scales, aspect_ratios=tuple(hd.aspect_ratios),
        act=bb.activation, stochastic_depth_rate=float(bb.stochastic_depth_rate),
        assigner=MaxIoUAssigner(asg.pos_iou_thr, asg.neg_iou_thr, force_match=asg.force_match), loss=hd,
        pre_nms_topk=hd.pre_nms_topk)


def build_spinenet_variant(key: str, num_classes: int = 80, *, options: SpineNetOptions) -> RetinaNet:
    """``spinenet_<key>``: SpineNet-49's block spec at the variant's scale + RetinaNet (arXiv 1912.05027)."""
    variant = SPINENET_VARIANTS[key]
    return build_spinenet(spinenet49_spec(variant.scale, name=f"spinenet-{key}"), variant.scale, num_classes,
                          options=options)


def spinenet_from_spec(num_classes: int = 80, *, options: SpineNetOptions,
                       spec: str | Path | Mapping[str, Any] | SpineNetSpec | None = None) -> RetinaNet:
    """Any valid SpineNet spec + RetinaNet. The spec's ``scale`` section (if any) replaces the
    SpineNet-49 scale settings; ``options.backbone`` fields that are set override both. The head
    width defaults to the endpoint width, 4 convs, anchor size 3.

    >>> m = detmodels.create_model("spinenet", 3, spec={"blocks": [...], "scale": {...}})  # doctest: +SKIP
    """
    resolved = resolve_spec(spec)
    return build_spinenet(resolved, resolved.scale or SPINENET_VARIANTS["49"].scale, num_classes, options=options)
