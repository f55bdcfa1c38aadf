"""RTMDet and RTMDet-Ins (Lyu et al. 2022, "RTMDet: An Empirical Study of Designing Real-Time
Object Detectors", arXiv 2212.07784): CSPNeXt backbone, CSPNeXtPAFPN neck, shared-conv /
separate-BN head, dynamic soft-label assignment.

Options (:class:`RTMDetOptions`, shared by RTMDet-Ins in ``rtmdet_ins``): ``neck``
(:class:`RTMDetNeckOptions`), ``head`` loss weights (:class:`RTMDetHeadOptions`), ``assigner``
(:class:`DSLOptions`, §3.2)::

    >>> import detmodels
    >>> from detmodels import RTMDetNeckOptions
    >>> model = detmodels.create_model("rtmdet_tiny", num_classes=3, neck=RTMDetNeckOptions(expand_ratio=0.75))
    >>> model.neck.top_down_blocks[0].main_conv.conv.out_channels  # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assigners import DynamicSoftLabelAssigner
from ..base import Detector, RawOutputs
from ..layers import ConvNormAct, CSPLayer, PyramidPoolingModule, SPPBottleneck, SqueezeExcitation
from ..layers.init import kaiming_normal_convs_, kaiming_uniform_convs_, set_bn_
from ..ops import clip_boxes, distance2bbox, float32_guard, iou_loss, quality_focal_loss
from ..structures import Detections, InputSpec, Target
from .rtmdet_heads import RTMDetSepBNHead, make_priors
from .rtmdet_options import (RTMDET_CONFIGS, DSLOptions, RTMDetConfig, RTMDetHeadOptions, RTMDetNeckOptions,
                             RTMDetOptions)

__all__ = ["RTMDetConfig", "RTMDET_CONFIGS", "CSPNeXt", "CSPNeXtPAFPN", "RTMDet", "build_rtmdet",
           "RTMDetOptions", "RTMDetNeckOptions", "RTMDetHeadOptions", "DSLOptions", "rtmdet_kwargs",
           "BN_EPS", "BN_MOMENTUM", "init_conv_modules_"]

STRIDES = (8, 16, 32)
RTMDET_INPUT_SPEC = InputSpec(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="BGR")
# (in, out, blocks, add_identity, use_spp) of the P5 CSPNeXt stages before scaling (§3.1, Table 1).
_ARCH_P5 = ((64, 128, 3, True, False), (128, 256, 6, True, False), (256, 512, 6, True, False),
            (512, 1024, 3, False, True))
# Every RTMDet / RTMDet-Ins config passes ``norm_cfg=dict(type='SyncBN')`` with no eps or momentum, so
# the BN is PyTorch's default (mmdetection ``configs/rtmdet/rtmdet_l_8xb32-300e_coco.py``); the
# modules' own defaults (eps 1e-3, momentum 0.03) never apply.
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


def init_conv_modules_(module: nn.Module) -> None:
    """mmcv ``ConvModule.init_weights`` (``mmcv/cnn/bricks/conv_module.py``, SiLU → the ``relu``
    branch) on every :class:`ConvNormAct` in ``module``: conv weight ~ N(0, √(2/fan_out)) with
    fan_out = out·k·k (``kaiming_init``: normal, fan_out, relu), bias 0; BN γ = 1, β = 0.
    Other convs (e.g. channel attention's ``fc``) are left at PyTorch's default."""
    for m in module.modules():
        if isinstance(m, ConvNormAct):
            kaiming_normal_convs_(m, a=0.0, mode="fan_out", nonlinearity="relu", bias=0.0)
            set_bn_(m, eps=m.norm.eps, momentum=m.norm.momentum, reset_affine=True)


class CSPNeXt(nn.Module):
    """RTMDet §3.1 backbone: stem of three 3×3 ConvNormAct (first stride 2), then 4 stages of
    [3×3 stride-2 ConvNormAct → (SPPBottleneck, last stage) → CSPLayer with channel attention].

    ``forward(x)`` ``N×3×H×W`` → ``[C3, C4, C5]`` at strides 8/16/32 with :attr:`out_channels`.
    Initialised by :meth:`init_weights` (``init``, as mmdetection ``mmdet/models/backbones/cspnext.py``).
    """

    def __init__(self, cfg: RTMDetConfig, expand_ratio: float = 0.5, channel_attention: bool = True,
                 init: str = "kaiming_uniform"):
        super().__init__()
        stem = cfg.channels(64)
        self.stem = nn.Sequential(
            ConvNormAct(3, stem // 2, 3, 2), ConvNormAct(stem // 2, stem // 2, 3), ConvNormAct(stem // 2, stem, 3),
        )
        self.stage_names = []
        for i, (cin, cout, n, identity, spp) in enumerate(_ARCH_P5):
            cin, cout = cfg.channels(cin), cfg.channels(cout)
            layers: list[nn.Module] = [ConvNormAct(cin, cout, 3, 2)]
            if spp:
                layers.append(SPPBottleneck(cout, cout))
            layers.append(CSPLayer(cout, cout, cfg.blocks(n), add_identity=identity, expand_ratio=expand_ratio,
                                   channel_attention=channel_attention))
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            self.stage_names.append(f"stage{i + 1}")
        self.out_channels = [cfg.channels(c) for _, c, *_ in _ARCH_P5[1:]]
        self.init_weights(init)

    def init_weights(self, init: str = "kaiming_uniform") -> None:
        """``"kaiming_uniform"``: CSPNeXt's default ``init_cfg`` (mmengine ``KaimingInit``: every
        Conv2d U(±1/√fan_in), i.e. a = √5, fan_in, leaky_relu; biases 0); ``"conv_module"``: that
        ``init_cfg`` replaced (the tiny/s configs' pretrained backbone, absent): the ConvModules keep
        their own init (:func:`init_conv_modules_`), channel attention keeps PyTorch's. BN γ 1, β 0."""
        if init == "kaiming_uniform":
            kaiming_uniform_convs_(self, a=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu", bias=0.0)
        elif init == "conv_module":
            init_conv_modules_(self)
        else:
            raise ValueError(f"CSPNeXt init: expected 'kaiming_uniform' or 'conv_module', got {init!r}")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for i, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if i >= 1:
                outs.append(x)
        return outs


class CSPNeXtPAFPN(nn.Module):
    """RTMDet §3.1 neck: PAFPN with CSPLayers (no identity, no channel attention).

    Top-down: reduce C5 (1×1) → R5, up ×2 (nearest), concat C4 → CSP → T4; reduce T4 → R4, up,
    concat C3 → CSP → P3. Bottom-up: 3×3/2 conv P3, concat R4 → CSP → P4; 3×3/2 conv, concat
    R5 → CSP → P5. Then a 3×3 ConvNormAct per level to ``out_channels``.

    Options (searched later): ``expand_ratio`` of the CSP layers; ``se`` adds a
    :class:`SqueezeExcitation` after every CSP layer; ``ppm`` puts a :class:`PyramidPoolingModule`
    on the C5 input. Shapes: ``[N×c3×H/8, N×c4×H/16, N×c5×H/32]`` → 3 maps ``N×out×…``.
    Init (mmdetection ``mmdet/models/necks/cspnext_pafpn.py`` default ``init_cfg``, kept by every
    RTMDet config): every Conv2d U(±1/√fan_in) (Kaiming uniform, a = √5, fan_in), biases 0.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_blocks: int, expand_ratio: float = 0.5,
                 se: bool = False, ppm: bool = False):
        super().__init__()
        c = list(in_channels)
        self.ppm = PyramidPoolingModule(c[-1]) if ppm else None

        def csp(cin: int, cout: int) -> CSPLayer:
            return CSPLayer(cin, cout, num_blocks, add_identity=False, expand_ratio=expand_ratio)

        self.reduce_layers = nn.ModuleList(ConvNormAct(c[i], c[i - 1], 1) for i in range(len(c) - 1, 0, -1))
        self.top_down_blocks = nn.ModuleList(csp(2 * c[i - 1], c[i - 1]) for i in range(len(c) - 1, 0, -1))
        self.downsamples = nn.ModuleList(ConvNormAct(c[i], c[i], 3, 2) for i in range(len(c) - 1))
        self.bottom_up_blocks = nn.ModuleList(csp(2 * c[i], c[i + 1]) for i in range(len(c) - 1))
        self.out_convs = nn.ModuleList(ConvNormAct(ci, out_channels, 3) for ci in c)
        se_channels = [c[i - 1] for i in range(len(c) - 1, 0, -1)] + c[1:]
        self.se_layers = nn.ModuleList(SqueezeExcitation(ch) for ch in se_channels) if se else None
        kaiming_uniform_convs_(self, a=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu", bias=0.0)

    def _csp(self, block: CSPLayer, index: int, x: Tensor) -> Tensor:
        y = block(x)
        return self.se_layers[index](y) if self.se_layers is not None else y

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        feats = list(feats)
        if self.ppm is not None:
            feats[-1] = self.ppm(feats[-1])
        n = len(feats)
        inner = [feats[-1]]
        for k, idx in enumerate(range(n - 1, 0, -1)):
            reduced = self.reduce_layers[k](inner[0])
            inner[0] = reduced
            up = F.interpolate(reduced, scale_factor=2.0, mode="nearest")
            inner.insert(0, self._csp(self.top_down_blocks[k], k, torch.cat((up, feats[idx - 1]), 1)))
        outs = [inner[0]]
        for idx in range(n - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self._csp(self.bottom_up_blocks[idx], n - 1 + idx, torch.cat((down, inner[idx + 1]), 1)))
        return [conv(o) for conv, o in zip(self.out_convs, outs)]


def _flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level ``N×C×H×W`` maps → ``N×A×C`` (levels concatenated, row-major positions)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


class RTMDet(Detector):
    """RTMDet detector (arXiv 2212.07784): CSPNeXt → CSPNeXtPAFPN → RTMDetSepBNHead.

    ``forward(images)`` → ``{"cls": [N×C×H_l×W_l], "box": [N×4×H_l×W_l]}`` per stride 8/16/32:
    class logits and (l, t, r, b) distances in input pixels (the reference's raw ``bbox_preds``).
    Loss (§3.2): :class:`DynamicSoftLabelAssigner`, QualityFocalLoss (β 2) normalised by the sum
    of assigned IoUs (min 1), GIoU (weight 2) weighted by the assigned IoU.
    """

    family = "rtmdet"
    task = "bbox"
    input_spec = RTMDET_INPUT_SPEC

    def __init__(self, cfg: RTMDetConfig, num_classes: int = 80, *, neck_expand_ratio: float = 0.5,
                 neck_se: bool = False, neck_ppm: bool = False, assigner: DynamicSoftLabelAssigner | None = None,
                 loss_weights: Mapping[str, float] | None = None):
        super().__init__(num_classes, STRIDES)
        self.cfg = cfg
        self.backbone = CSPNeXt(cfg, init=cfg.backbone_init)
        feat = cfg.channels(256)
        self.neck = CSPNeXtPAFPN(self.backbone.out_channels, feat, cfg.blocks(3), neck_expand_ratio,
                                 se=neck_se, ppm=neck_ppm)
        self.bbox_head = self._make_head(cfg, num_classes, feat)
        self.assigner = assigner or DynamicSoftLabelAssigner()
        self.loss_weights = {"cls": 1.0, "bbox": 2.0, "mask": 2.0, **dict(loss_weights or {})}
        set_bn_(self, eps=BN_EPS, momentum=BN_MOMENTUM)

    def _make_head(self, cfg: RTMDetConfig, num_classes: int, feat: int) -> nn.Module:
        return RTMDetSepBNHead(num_classes, feat, feat, STRIDES, exp_on_reg=cfg.exp_on_reg)

    def forward(self, images: Tensor) -> RawOutputs:
        cls, box = self.bbox_head(self.neck(self.backbone(images)))
        return {"cls": cls, "box": box}

    # ------------------------------------------------------------------ decoding
    def _priors(self, outputs: RawOutputs) -> Tensor:
        sizes = [tuple(m.shape[-2:]) for m in outputs["cls"]]
        return make_priors(sizes, self.strides, outputs["cls"][0].device)

    def decode(self, outputs: RawOutputs) -> tuple[Tensor, Tensor]:
        """Boxes ``N×A×4`` (xyxy, input px, clipped to the input canvas as the reference does) =
        prior point ∓ distances; scores ``N×A×C`` = σ(logits)."""
        priors = self._priors(outputs)
        boxes = distance2bbox(priors[None, :, :2], _flatten_levels(outputs["box"]).float())
        return clip_boxes(boxes, self._input_hw(outputs)), _flatten_levels(outputs["cls"]).float().sigmoid()

    def postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.05,
                    nms_iou: float = 0.6, max_det: int = 100,
                    scale_factors: Sequence[float] | None = None) -> list[Detections]:
        """Score filter, class-aware NMS, rescale to original image pixels (one entry per image)."""
        return self._dense_postprocess(outputs, image_sizes, score_thr, nms_iou, max_det, scale_factors)

    # ------------------------------------------------------------------ training
    def _assign_batch(self, logits: Tensor, boxes: Tensor, priors: Tensor,
                      targets: Sequence[Target]) -> tuple[Tensor, Tensor, Tensor]:
        """Per image DSL assignment → (labels ``N×A`` (C = background), IoU metrics ``N×A``,
        matched GT index ``N×A`` (−1 background))."""
        labels = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        metrics = torch.zeros(logits.shape[:2], device=logits.device)
        gt_index = torch.full(logits.shape[:2], -1, dtype=torch.long, device=logits.device)
        for b, t in enumerate(targets):
            gt_boxes = t["boxes"].to(logits.device).float()
            gt_labels = t["labels"].to(logits.device).long()
            centers = self._gt_centers(t, logits.device)
            res = self.assigner.assign(logits[b].detach(), boxes[b].detach(), priors, gt_boxes, gt_labels, centers)
            pos = res.positive
            labels[b, pos] = gt_labels[res.gt_index[pos]]
            metrics[b] = res.metrics
            gt_index[b] = res.gt_index
        return labels, metrics, gt_index

    def _gt_centers(self, target: Target, device: torch.device) -> Tensor | None:
        return None

    @float32_guard
    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox"}`` (RTMDet §3.2; normalisation as the reference), in float32
        (decode, assignment and reductions) whatever autocast the forward ran under."""
        losses, _ = self._det_loss(outputs, targets)
        return losses

    def _det_loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> tuple[dict[str, Tensor], tuple]:
        priors = self._priors(outputs)
        logits = _flatten_levels(outputs["cls"]).float()
        boxes = distance2bbox(priors[None, :, :2], _flatten_levels(outputs["box"]).float())
        labels, metrics, gt_index = self._assign_batch(logits, boxes, priors, targets)
        qfl = quality_focal_loss(logits.reshape(-1, self.num_classes), labels.reshape(-1), metrics.reshape(-1))
        loss_cls = qfl.sum() / metrics.sum().clamp(min=1.0)
        pos = gt_index >= 0
        gt_boxes = torch.cat([t["boxes"].to(boxes.device).float().reshape(-1, 4) for t in targets])
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets][:-1], device=boxes.device).cumsum(0)
        flat_gt = (gt_index + offsets[:, None])[pos]
        weight = metrics[pos]
        giou = iou_loss(boxes[pos], gt_boxes[flat_gt], "giou", eps=1e-6) * weight
        loss_bbox = giou.sum() / weight.sum().clamp(min=1.0) + boxes.sum() * 0
        losses = {"loss_cls": self.loss_weights["cls"] * loss_cls, "loss_bbox": self.loss_weights["bbox"] * loss_bbox}
        return losses, (priors, gt_index, metrics)


# ---------------------------------------------------------------------- builders
def rtmdet_kwargs(options: RTMDetOptions) -> dict:
    """Keyword arguments of :class:`RTMDet` (and RTMDet-Ins) from typed options."""
    neck, head, dsl = options.neck, options.head, options.assigner
    return {
        "neck_expand_ratio": float(neck.expand_ratio), "neck_se": neck.se, "neck_ppm": neck.ppm,
        "assigner": DynamicSoftLabelAssigner(soft_center_alpha=dsl.soft_center_alpha,
                                             soft_center_beta=dsl.soft_center_beta, topk=dsl.topk,
                                             iou_weight=dsl.iou_weight),
        "loss_weights": {"cls": float(head.loss_cls_weight), "bbox": float(head.loss_bbox_weight),
                         "mask": float(head.loss_mask_weight)},
    }


def build_rtmdet(size: str, num_classes: int = 80, *, options: RTMDetOptions | None = None,
                 model_cls: type[RTMDet] = RTMDet) -> RTMDet:
    """Build RTMDet (or ``model_cls``, e.g. RTMDet-Ins) of ``size`` in tiny/s/m/l/x with typed
    ``options`` (default: the paper's)."""
    if size not in RTMDET_CONFIGS:
        raise ValueError(f"unknown RTMDet size {size!r}; expected one of {sorted(RTMDET_CONFIGS)}")
    return model_cls(RTMDET_CONFIGS[size], num_classes, **rtmdet_kwargs(options or RTMDetOptions()))


from . import rtmdet_weights  # noqa: E402,F401  (registers the "mmdet" weight source)
