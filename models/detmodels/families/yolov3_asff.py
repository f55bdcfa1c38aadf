"""YOLOv3 with Adaptively Spatial Feature Fusion (Liu et al. 2019, "Learning Spatial Fusion for
Single-Shot Object Detection", arXiv 1911.09516): the paper's strong YOLOv3 baseline (Darknet-53,
SPP, guided-anchoring head with a deformable 3×3 "feature adaption"), + ASFF (§3), + ASFF* (RFB).

Variants (:data:`~.yolov3_asff_options.YOLOV3_ASFF_VARIANTS`): ``yolov3`` (baseline), ``yolov3_asff``,
``yolov3_asff_rfb`` (ASFF*), input 608.

>>> import detmodels
>>> m = detmodels.create_model("yolov3_asff", num_classes=3)  # doctest: +SKIP

Options (:class:`YOLOv3ASFFOptions`): ``neck.dropblock``, ``head.ignore_thr``, ``head.label_smooth``.

Pixels: RGB, ``/255`` then ImageNet mean/std (the reference ``preproc_for_test``).
DropBlock (``--dropblock``, on for ASFF*) follows the reference schedule through ``set_epoch``.
Initialisation: the reference's (:func:`init_yolov3_asff_`), run in the constructor; loaded weights replace it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Detector, RawOutputs
from ..layers.asff import ASFF, RFBBlock
from ..layers.darknet import SPP, Darknet53, DarknetBottleneck, darknet_conv
from ..layers.deform_conv import DeformConv2d
from ..layers.dropblock import DropBlock
from ..layers.init import kaiming_normal_convs_, set_bn_
from ..ops import box_cxcywh_to_xyxy, float32_guard
from ..structures import Detections, InputSpec, Target
from .yolov3_asff_loss import YOLOv3LossConfig, yolov3_level_loss
from .yolov3_asff_options import (YOLOV3_ASFF_VARIANTS, YOLOv3ASFFHeadOptions, YOLOv3ASFFNeckOptions,
                                  YOLOv3ASFFOptions)

__all__ = ["YOLOv3SPPNeck", "FeatureAdaption", "GuidedAnchorHead", "YOLOv3ASFF", "build_yolov3_asff",
           "build_yolov3_asff_variant", "ANCHORS", "YOLOV3_INPUT_SPEC", "init_yolov3_asff_", "YOLOv3ASFFOptions", "YOLOv3ASFFNeckOptions",
           "YOLOv3ASFFHeadOptions"]

# The reference fills expanded/padded areas with the mean colour (TrainTransform): 114 is its nearest grey.
YOLOV3_INPUT_SPEC = InputSpec(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB",
                              pad_value=114.0)
STRIDES = (8, 16, 32)
# The reference repository's anchors (w, h) in input pixels; 3 per level, finest level first.
# The last one is 121×240 (stock YOLOv3: 373×326; the repo's README says its anchor setting was wrong).
ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (42, 119), (116, 90), (156, 198), (121, 240))
NUM_SLOTS = 4  # 3 anchor-based slots + 1 anchor-free slot per cell
ANCHOR_FREE_SCALE = 4  # the anchor-free slot's reference size is 4·stride
# DropBlock schedule of the reference (main.py), for 300 epochs: from epoch e, block sizes of the
# (F32, F16, F8) slots, keep probability 0.9; epochs are rescaled to the run's max_epochs.
DROPBLOCK_SCHEDULE = ((5, (1, 3, 5)), (80, (3, 5, 7)), (150, (7, 7, 7)))
DROPBLOCK_KEEP = 0.9
REFERENCE_EPOCHS = 300


class YOLOv3SPPNeck(nn.Module):
    """YOLOv3-SPP neck of the ASFF baseline (FPN top-down with Darknet conv units).

    C5 → non-residual block → 1×1 512 → :class:`SPP` → 1×1 512 → 3×3 1024 → 1×1 512 = F32;
    F32 → 1×1 256, ×2, concat C4 → 1×1 256 → 3×3 512 → non-residual block → 1×1 256 = F16;
    F16 → 1×1 128, ×2, concat C3 → 1×1 128 → 3×3 256 → non-residual block → 1×1 128 → 3×3 256 = F8.

    A :class:`DropBlock` slot follows each 3×3 conv (``drop5``, ``drop4``, ``drop3``; identities
    until scheduled). ``forward([C3, C4, C5])`` (256/512/1024 ch) → ``[F8 N×256, F16 N×256, F32 N×512]``.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 512, 1024)):
        super().__init__()
        c3, c4, c5 = in_channels
        self.block5 = DarknetBottleneck(c5, shortcut=False)
        self.reduce5 = darknet_conv(c5, 512, 1)
        self.spp = SPP()
        self.spp_conv = darknet_conv(2048, 512, 1)
        self.conv5 = darknet_conv(512, 1024, 3)
        self.drop5 = DropBlock()
        self.out5 = darknet_conv(1024, 512, 1)
        self._add_top_down(4, 256, c4)
        self._add_top_down(3, 128, c3)
        self.expand3 = darknet_conv(128, 256, 3)
        self.out_channels = [256, 256, 512]

    def _add_top_down(self, level: int, width: int, skip_channels: int) -> None:
        """Level ``level``'s modules, named with the level (``lateral4`` … ``out4``): lateral 1×1
        2w → w, fuse 1×1 (w + skip) → w, conv 3×3 w → 2w, drop, non-residual block, out 1×1 2w → w."""
        for name, module in (("lateral", darknet_conv(2 * width, width, 1)),
                             ("fuse", darknet_conv(width + skip_channels, width, 1)),
                             ("conv", darknet_conv(width, 2 * width, 3)),
                             ("drop", DropBlock()),
                             ("block", DarknetBottleneck(2 * width, shortcut=False)),
                             ("out", darknet_conv(2 * width, width, 1))):
            self.add_module(f"{name}{level}", module)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        f32 = self.out5(self.drop5(self.conv5(self.spp_conv(self.spp(self.reduce5(self.block5(c5)))))))
        x = F.interpolate(self.lateral4(f32), scale_factor=2.0, mode="nearest")
        f16 = self.out4(self.block4(self.drop4(self.conv4(self.fuse4(torch.cat((x, c4), 1))))))
        x = F.interpolate(self.lateral3(f16), scale_factor=2.0, mode="nearest")
        f8 = self.expand3(self.out3(self.block3(self.drop3(self.conv3(self.fuse3(torch.cat((x, c3), 1)))))))
        return [f8, f16, f32]


class FeatureAdaption(nn.Module):
    """Guided-anchoring feature adaption (Wang et al. 2019, arXiv 1901.03278 §3.3) as the ASFF
    baseline uses it: offsets from the *detached* predicted log-wh by a grouped 1×1 conv
    (``2·S → 18·S``, ``S`` groups), then a 3×3 :class:`DeformConv2d` with ``S`` deformable groups.
    With ``rfb`` an :class:`RFBBlock` runs on the input first (ASFF*).

    ``forward(x, wh)``: ``N×C×H×W``, ``N×2S×H×W`` → ``N×C×H×W``.
    """

    def __init__(self, channels: int, num_slots: int = NUM_SLOTS, rfb: bool = False):
        super().__init__()
        self.conv_offset = nn.Conv2d(2 * num_slots, 2 * 9 * num_slots, 1, groups=num_slots)
        self.dconv = DeformConv2d(channels, channels, 3, 1, 1, deformable_groups=num_slots)
        self.rfb = RFBBlock(channels) if rfb else None

    def forward(self, x: Tensor, wh: Tensor) -> Tensor:
        if self.rfb is not None:
            x = self.rfb(x)
        return self.dconv(x, self.conv_offset(wh.detach()))


class GuidedAnchorHead(nn.Module):
    """Per-level head of the ASFF repository (its ``YOLOv3Head``): ``guide_wh`` 1×1 → ``2·S``
    log-wh of the ``S = 4`` slots; :class:`FeatureAdaption`; ``pred`` 1×1 → ``S·(5 + C)``.

    ``forward(x)`` → ``(pred N×S(5+C)×H×W, wh N×2S×H×W)``; channels per slot ``(tx, ty, tw, th,
    obj, cls…)`` and ``(log w, log h)``.
    """

    def __init__(self, in_channels: int, num_classes: int, num_slots: int = NUM_SLOTS, rfb: bool = False):
        super().__init__()
        self.guide_wh = nn.Conv2d(in_channels, 2 * num_slots, 1)
        self.adaption = FeatureAdaption(in_channels, num_slots, rfb)
        self.pred = nn.Conv2d(in_channels, num_slots * (num_classes + 5), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        wh = self.guide_wh(x)
        return self.pred(self.adaption(x, wh)), wh


def _slot_view(t: Tensor, per_slot: int) -> Tensor:
    """``N×(S·K)×H×W`` → ``N×S×H×W×K``."""
    n, _, h, w = t.shape
    return t.reshape(n, -1, per_slot, h, w).permute(0, 1, 3, 4, 2)


class YOLOv3ASFF(Detector):
    """YOLOv3 baseline / + ASFF / + ASFF* (arXiv 1911.09516).

    ``forward(images)`` → per stride 8/16/32: ``"cls"`` ``N×(4·C)×H×W`` logits, ``"box"``
    ``N×(4·4)×H×W`` raw ``(tx, ty, tw, th)``, ``"obj"`` ``N×4×H×W`` objectness logits, ``"wh"``
    ``N×(4·2)×H×W`` guided-anchor log-wh (4 slots: the level's 3 anchors, then the anchor-free slot).
    Loss: the reference's (see :mod:`.yolov3_asff_loss`).
    """

    family = "yolov3_asff"
    task = "bbox"
    input_spec = YOLOV3_INPUT_SPEC

    def __init__(self, num_classes: int = 80, *, asff: bool = True, rfb: bool = False, dropblock: bool = False,
                 loss: YOLOv3LossConfig | None = None):
        super().__init__(num_classes, STRIDES)
        self.asff, self.rfb, self.dropblock = asff, rfb, dropblock
        self.backbone = Darknet53()
        self.neck = YOLOv3SPPNeck(self.backbone.out_channels)
        head_channels = (256, 512, 1024)
        if asff:
            self.fusions = nn.ModuleList(
                ASFF(2 - i, (512, 256, 256), (512, 256, 256), head_channels[i], 8 if rfb else 16)
                for i in range(3))
        else:  # the baseline's 3×3 conv before each head (F8 already has 256 channels)
            self.fusions = nn.ModuleList([nn.Identity(), darknet_conv(256, 512, 3), darknet_conv(512, 1024, 3)])
        self.heads = nn.ModuleList(GuidedAnchorHead(c, num_classes, rfb=rfb) for c in head_channels)
        self.loss_cfg = loss or YOLOv3LossConfig()
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32), persistent=False)
        init_yolov3_asff_(self)

    def set_epoch(self, epoch: int, max_epochs: int) -> None:
        """Apply the reference DropBlock schedule (epochs rescaled from 300 to ``max_epochs``)."""
        super().set_epoch(epoch, max_epochs)
        if not self.dropblock:
            return
        sizes, keep = (1, 1, 1), 1.0
        for start, block_sizes in DROPBLOCK_SCHEDULE:
            if epoch >= round(start * self._max_epochs / REFERENCE_EPOCHS):
                sizes, keep = block_sizes, DROPBLOCK_KEEP
        for drop, size in zip((self.neck.drop5, self.neck.drop4, self.neck.drop3), sizes):
            drop.reset(size, keep)

    def forward(self, images: Tensor) -> RawOutputs:
        feats = self.neck(self.backbone(images))
        out: RawOutputs = {"cls": [], "box": [], "obj": [], "wh": []}
        for i, (fusion, head) in enumerate(zip(self.fusions, self.heads)):
            x = fusion(feats[::-1]) if self.asff else fusion(feats[i])
            pred, wh = head(x)
            n, _, h, w = pred.shape
            p = pred.reshape(n, NUM_SLOTS, self.num_classes + 5, h, w)
            out["box"].append(p[:, :, :4].reshape(n, -1, h, w))
            out["obj"].append(p[:, :, 4])
            out["cls"].append(p[:, :, 5:].reshape(n, -1, h, w))
            out["wh"].append(wh)
        return out

    def slot_anchors(self, wh: Tensor, level: int) -> Tensor:
        """Guided anchor sizes ``N×S×H×W×2`` in pixels: ``exp(wh)`` × (level anchor | 4·stride)."""
        ref = torch.cat((self.anchors[3 * level:3 * level + 3].to(wh.dtype),
                         wh.new_full((1, 2), float(ANCHOR_FREE_SCALE * self.strides[level]))))
        return _slot_view(wh, 2).exp() * ref.view(1, NUM_SLOTS, 1, 1, 2)

    def decode_level(self, outputs: RawOutputs, level: int) -> tuple[Tensor, Tensor]:
        """One level: boxes ``N×S×H×W×4`` (cx, cy, w, h in pixels) and scores ``N×S×H×W×C``
        (σ(obj)·σ(cls), the reference's ranking score)."""
        s = self.strides[level]
        box = _slot_view(outputs["box"][level].float(), 4)
        h, w = box.shape[2:4]
        ys = torch.arange(h, device=box.device, dtype=box.dtype).view(1, 1, h, 1)
        xs = torch.arange(w, device=box.device, dtype=box.dtype).view(1, 1, 1, w)
        wh = self.slot_anchors(outputs["wh"][level].float(), level) * box[..., 2:].exp()
        ctr = torch.stack(((box[..., 0].sigmoid() + xs) * s, (box[..., 1].sigmoid() + ys) * s), -1)
        obj = outputs["obj"][level].float().sigmoid()[..., None]
        scores = obj * _slot_view(outputs["cls"][level].float(), self.num_classes).sigmoid()
        return torch.cat((ctr, wh), -1), scores

    def decode(self, outputs: RawOutputs) -> tuple[Tensor, Tensor]:
        """Boxes ``N×A×4`` xyxy input px, scores ``N×A×C``; A = Σ 4·H·W ordered (level, slot, y, x)."""
        boxes, scores = [], []
        for lv in range(len(self.strides)):
            b, s = self.decode_level(outputs, lv)
            boxes.append(box_cxcywh_to_xyxy(b).flatten(1, 3))
            scores.append(s.flatten(1, 3))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.01,
                    nms_iou: float = 0.65, max_det: int = 100,
                    scale_factors: Sequence[float] | None = None) -> list[Detections]:
        """Reference test settings: confidence 0.01 (σ(obj)·σ(cls)), class-wise NMS at 0.65."""
        return self._dense_postprocess(outputs, image_sizes, score_thr, nms_iou, max_det, scale_factors, key="obj")

    @float32_guard
    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """``loss_anchor``, ``loss_iou``, ``loss_l1``, ``loss_obj``, ``loss_cls`` summed over levels,
        divided by the batch size (reference ``YOLOv3Head``), in float32 under autocast."""
        h0, w0 = outputs["obj"][0].shape[-2:]
        image_hw = (h0 * self.strides[0], w0 * self.strides[0])
        totals: dict[str, Tensor] = {}
        for lv in range(len(self.strides)):
            terms = yolov3_level_loss(
                _slot_view(outputs["box"][lv].float(), 4), outputs["obj"][lv].float(),
                _slot_view(outputs["cls"][lv].float(), self.num_classes),
                self.slot_anchors(outputs["wh"][lv].float(), lv), self.decode_level(outputs, lv)[0],
                targets, self.anchors, lv, self.strides[lv], image_hw, self.loss_cfg)
            for k, v in terms.items():
                totals[k] = totals[k] + v if k in totals else v
        return totals


# ---------------------------------------------------------------------- initialisation
# The reference's init (GOATmessi7/ASFF main.py ``init_yolo``, applied to the whole model before
# any checkpoint is loaded): Kaiming-normal fan-in with the LeakyReLU slope as ``a``.
INIT_LEAKY_SLOPE = 0.1
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # network_blocks.py ``add_conv``: ``nn.BatchNorm2d(out_ch)``, PyTorch defaults


def init_yolov3_asff_(model: nn.Module) -> None:
    """Initialise ``model`` as the reference code does (GOATmessi7/ASFF ``main.py`` ``init_yolo``;
    ``models/network_blocks.py``, ``models/yolov3_head.py``, ``utils/DCN/modules/deform_conv2d.py``).

    * every ``nn.Conv2d`` (Darknet/neck/ASFF conv units, ASFF's biased ``weight_levels``, the head's
      ``guide_wh``, ``conv_offset`` and ``pred``, RFB convs): ``kaiming_normal_(a=0.1, mode="fan_in",
      nonlinearity="leaky_relu")``, i.e. ``N(0, √(2/1.01)/√fan_in)``; biases 0. The head has no
      separate normal std and no prior-probability class/objectness bias: they start at 0;
    * the deformable 3×3 conv is not an ``nn.Conv2d`` and keeps its own ``reset_parameters``
      (Kaiming-uniform ``a=√5``, bias ``U(±1/√fan_in)``, as :class:`DeformConv2d` already does);
    * BatchNorm: γ = 1, β = 0, eps 1e-5, momentum 0.1 (PyTorch defaults; the reference's apex
      SyncBN conversion keeps them).
    """
    kaiming_normal_convs_(model, a=INIT_LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu", bias=0.0)
    set_bn_(model, eps=BN_EPS, momentum=BN_MOMENTUM, reset_affine=True)


# ---------------------------------------------------------------------- builders
def build_yolov3_asff(num_classes: int = 80, *, asff: bool = True, rfb: bool = False,
                      options: YOLOv3ASFFOptions | None = None) -> YOLOv3ASFF:
    """Build YOLOv3 (+ASFF, +RFB) with typed ``options`` (default: :class:`YOLOv3ASFFOptions`)."""
    opts = options or YOLOv3ASFFOptions()
    loss = YOLOv3LossConfig(ignore_thr=float(opts.head.ignore_thr), label_smooth=opts.head.label_smooth)
    return YOLOv3ASFF(num_classes, asff=asff, rfb=rfb, dropblock=opts.neck.dropblock, loss=loss)


def build_yolov3_asff_variant(name: str, num_classes: int = 80, *, options: YOLOv3ASFFOptions) -> YOLOv3ASFF:
    """Variant ``name`` of :data:`YOLOV3_ASFF_VARIANTS` (``yolov3``, ``yolov3_asff``, ``yolov3_asff_rfb``)."""
    variant = YOLOV3_ASFF_VARIANTS[name]
    return build_yolov3_asff(num_classes, asff=variant.asff, rfb=variant.rfb, options=options)


from . import yolov3_asff_weights  # noqa: E402,F401  (registers the "asff" weight source)
