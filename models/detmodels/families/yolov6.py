"""YOLOv6 v3.0 (Li et al., arXiv 2301.05586): EfficientRep / CSPBep backbones, RepBi-PAN neck with
BiC, Efficient Decoupled Head, TAL/ATSS + VFL/IoU/DFL loss, anchor-aided training and self-distillation.

Registered variants ``yolov6_n``, ``yolov6_s``, ``yolov6_m``, ``yolov6_l`` (640 px) and the P6 models
``yolov6_n6`` … ``yolov6_l6`` (1280 px, strides 8–64) (arXiv 2301.05586 main table).

Options (:class:`YOLOv6Options`): ``backbone`` (block, csp_e), ``neck`` (csp_e), ``head``
(anchor_aided, dld, reg_max, iou_loss, temperature, distill_class_weight, distill_feat), ``assigner``
(:class:`TALOptions`: tal_topk, tal_alpha, tal_beta, atss_topk, aat_topk) and ``atss_warmup_epochs``;
each variant's defaults are ``get_model_entry(name).default_options``.

>>> import detmodels, dataclasses
>>> head = dataclasses.replace(detmodels.get_model_entry("yolov6_n").default_options.head, anchor_aided=True)
>>> model = detmodels.create_model("yolov6_n", num_classes=3, head=head)
>>> out = model(torch.zeros(2, 3, 64, 64))  # doctest: +SKIP
>>> sorted(out)  # training mode: AAT outputs too           # doctest: +SKIP
['box', 'box_ab', 'cls', 'cls_ab']
>>> detmodels.reparameterize_model(model)  # deploy form: RepVGG fused, BN folded, AAT dropped  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..base import Detector, RawOutputs
from ..layers import SPPF, BepC3, BiC, ConvNormAct, RepBlock, SimCSPSPPF, SimSPPF, make_rep_unit
from ..layers.init import set_bn_
from ..ops.precision import float32_guard
from ..structures import Detections, InputSpec, Target
from .yolov6_distill import cosine_distill_weight, yolov6_distill_loss
from .yolov6_head import EfficientDecoupledHead
from .yolov6_loss import YOLOv6Criterion, decode_dense
from .yolov6_options import (VARIANTS, TALOptions, YOLOv6BackboneOptions, YOLOv6Config,
                             YOLOv6HeadOptions, YOLOv6NeckOptions, YOLOv6Options, default_options)

__all__ = ["YOLOv6", "YOLOv6Config", "VARIANTS", "EfficientRep", "RepBiPAN", "cosine_distill_weight", "YOLOv6Options",
           "YOLOv6BackboneOptions", "YOLOv6NeckOptions", "YOLOv6HeadOptions", "TALOptions", "build_yolov6",
           "init_yolov6_"]

_BN = {"bn_eps": 1e-3, "bn_momentum": 0.03}


@torch.no_grad()
def init_yolov6_(model: "YOLOv6") -> None:
    """YOLOv6's initialisation and normalisation, as ``Model.__init__`` of meituan/YOLOv6
    ``yolov6/models/yolo.py``: first the head's ``initialize_biases``, then ``initialize_weights``
    (``yolov6/utils/torch_utils.py``).

    * every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (backbone, neck, head towers, BiC upsample): PyTorch's
      default, kept on purpose (the reference's ``initialize_weights`` passes over convs): weight
      ~ U(±1/√fan_in) (kaiming-uniform, a = √5), bias ~ U(±1/√fan_in) where present;
    * every BatchNorm: eps 1e-3, momentum 0.03 (PyTorch convention), γ = 1, β = 0;
    * head predictors (:meth:`EfficientDecoupledHead.init_predictors`): weight 0, class bias
      −log(99) (prior 0.01), box bias 1.0 (``yolov6/models/effidehead.py`` ``initialize_biases``);
    * BottleRep ``alpha`` = 1 (``yolov6/layers/common.py``).

    Runs in the constructor; converted / pretrained weights loaded afterwards overwrite it.
    """
    model.head.init_predictors()
    set_bn_(model, eps=1e-3, momentum=0.03)


def _stage_block(block: str, csp_e: float | None, c_in: int, c_out: int, n: int) -> nn.Module:
    """RepBlock of ``n`` units (EfficientRep) or BepC3 with ``n // 2`` BottleReps (CSPBep)."""
    if csp_e is None:
        return RepBlock(c_in, c_out, n, unit=block)
    return BepC3(c_in, c_out, n, csp_e, kind=block)


def _spp(kind: str, block: str, channels: int) -> nn.Module:
    act = "silu" if block == "conv_silu" else "relu"
    if kind == "simcspsppf":
        return SimCSPSPPF(channels, channels, 5, act=act)
    if kind == "simsppf":
        return SimSPPF(channels, channels, 5) if act == "relu" else SPPF(channels, channels, 5, act="silu")
    if kind == "sppf":
        return SPPF(channels, channels, 5, act=act)
    raise ValueError(f"unknown spp {kind!r}; expected simcspsppf, simsppf or sppf")


class EfficientRep(nn.Module):
    """EfficientRep (N/S) / CSPBep (M/L, ``csp_e`` set) backbone (YOLOv6 v3.0 "Network Design"), P5 or P6.

    stem 3×3/2, then stages of (3×3/2 unit → stage block); the last stage ends with the SPP module.
    Output: ``(C2, C3, …)`` at strides 4, 8, …, 32 (P5) or 64 (P6); C2 feeds the neck's last BiC.
    """

    def __init__(self, channels: Sequence[int], repeats: Sequence[int], *, block: str, csp_e: float | None, spp: str):
        super().__init__()
        self.out_channels = tuple(channels[1:])
        self.stem = make_rep_unit(block, 3, channels[0], 2)
        last = len(channels) - 1
        for i in range(1, last + 1):
            layers = [make_rep_unit(block, channels[i - 1], channels[i], 2),
                      _stage_block(block, csp_e, channels[i], channels[i], repeats[i])]
            if i == last:
                layers.append(_spp(spp, block, channels[i]))
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
        self.num_stages = last

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.stem(x)
        outs = []
        for i in range(2, self.num_stages + 2):
            x = getattr(self, f"stage{i}")(x)
            outs.append(x)
        return tuple(outs)


class RepBiPAN(nn.Module):
    """RepBi-PAN neck (YOLOv6 v3.0 "Network Design") for ``L`` = 3 (P3–P5) or 4 (P3–P6) output levels.

    Top-down, k = 0…L−2: ``top_k = reduce_k(x_k)`` (1×1), ``x_{k+1} = top_down_k(BiC_k(top_k, C_a, C_b))``
    with ``C_a``/``C_b`` the next two backbone levels; ``x_{L−1}`` is P3. Bottom-up, j = 0…L−2:
    ``out_{j+1} = bottom_up_j(cat(down_j(out_j), top_{L−2−j}))`` (3×3/2 down conv).

    Args: ``backbone`` channels (C2…); ``reduce`` channels of the top-down 1×1 convs; ``outs``
    channels of P3…; ``repeats`` of the stage blocks.
    """

    def __init__(self, backbone: Sequence[int], reduce: Sequence[int], outs: Sequence[int], repeats: int, *,
                 block: str, csp_e: float | None):
        super().__init__()
        relu = {"act": "relu", **_BN}
        rev = list(backbone)[::-1]  # C_last … C2
        self.num_levels = len(outs)
        c_in = rev[0]
        for k, c in enumerate(reduce):
            self.add_module(f"reduce{k}", ConvNormAct(c_in, c, 1, **relu))
            self.add_module(f"bic{k}", BiC((rev[k + 1], rev[k + 2]), c))
            self.add_module(f"top_down{k}", _stage_block(block, csp_e, c, c, repeats))
            c_in = c
        for j in range(len(outs) - 1):
            self.add_module(f"down{j}", ConvNormAct(outs[j], outs[j], 3, 2, **relu))
            self.add_module(f"bottom_up{j}", _stage_block(block, csp_e, outs[j] + reduce[-1 - j], outs[j + 1], repeats))
        self.out_channels = tuple(outs)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        rev = list(feats)[::-1]
        x, tops = rev[0], []
        for k in range(self.num_levels - 1):
            tops.append(getattr(self, f"reduce{k}")(x))
            x = getattr(self, f"top_down{k}")(getattr(self, f"bic{k}")(tops[-1], rev[k + 1], rev[k + 2]))
        outs = [x]
        for j in range(self.num_levels - 1):
            down = getattr(self, f"down{j}")(outs[-1])
            outs.append(getattr(self, f"bottom_up{j}")(torch.cat((down, tops[-1 - j]), 1)))
        return outs


class YOLOv6(Detector):
    """YOLOv6 v3.0 detector (anchor-free, 1 point per cell, strides 8/16/32).

    ``forward`` → ``{"cls": [N×C×H×W], "box": [N×4(reg_max+1)×H×W]}`` (+ ``cls_ab``/``box_ab`` with AAT and
    ``box_dfl`` with DLD, training mode only; + ``feats`` when feature distillation is on).
    Images are RGB scaled to [0, 1].
    """

    family = "yolov6"
    input_spec = InputSpec(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), channel_order="RGB")
    supports_feature_distill = True

    def __init__(self, cfg: YOLOv6Config, num_classes: int = 80, *, reg_max: int | None = None,
                 anchor_aided: bool = False, dld: bool = False, distill_feat: bool = False,
                 temperature: float = 20.0, distill_class_weight: float | None = None,
                 criterion_kwargs: dict[str, Any] | None = None):
        super().__init__(num_classes, cfg.strides)
        self.cfg = cfg
        self.reg_max = cfg.reg_max if reg_max is None else int(reg_max)
        self.distill_temperature = float(temperature)
        self.distill_class_weight = cfg.distill_class_weight if distill_class_weight is None else distill_class_weight
        self.distill_feat = distill_feat
        if cfg.p6 and (anchor_aided or dld):
            raise ValueError("yolov6: anchor_aided / dld are defined for the 3-level (P5) models only")
        base = cfg.base
        bb_ch = [cfg.ch(c) for c in base["backbone"]]
        self.backbone = EfficientRep(bb_ch, [cfg.rep(n) for n in base["backbone_repeats"]],
                                     block=cfg.block, csp_e=cfg.csp_e, spp=cfg.spp)
        self.neck = RepBiPAN(bb_ch[1:], [cfg.ch(c) for c in base["neck_reduce"]], [cfg.ch(c) for c in base["neck_out"]],
                             cfg.rep(base["neck_repeats"]), block=cfg.block,
                             csp_e=cfg.csp_e if cfg.neck_csp_e is None else cfg.neck_csp_e)
        self.head = EfficientDecoupledHead(self.neck.out_channels, num_classes, self.reg_max,
                                           anchor_aided=anchor_aided, dld=dld)
        self.criterion = YOLOv6Criterion(num_classes, self.strides, self.reg_max, iou_type=cfg.iou_loss,
                                         **(criterion_kwargs or {}))
        init_yolov6_(self)

    def forward(self, images: Tensor) -> RawOutputs:
        feats = self.neck(self.backbone(images))
        out: RawOutputs = self.head(feats)
        if self.distill_feat:  # set on the student and the teacher by :meth:`configure_distillation`
            out["feats"] = list(feats)
        return out

    @float32_guard
    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """``loss_cls`` (VFL), ``loss_iou`` (×2.5), ``loss_dfl`` (×0.5, DFL models/DLD) and, with AAT,
        ``loss_cls_ab``/``loss_iou_ab``; TAL, or ATSS during the warm-up epochs (see :meth:`set_epoch`). Float32 under autocast."""
        return self.criterion(outputs, targets, self._epoch)

    def decode(self, outputs: RawOutputs) -> tuple[Tensor, Tensor]:
        return decode_dense(outputs["cls"], outputs["box"], self.strides, self.reg_max)

    def postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.05,
                    nms_iou: float = 0.6, max_det: int = 100,
                    scale_factors: Sequence[float] | None = None) -> list[Detections]:
        return self._dense_postprocess(outputs, image_sizes, score_thr, nms_iou, max_det, scale_factors)

    def as_teacher(self) -> "YOLOv6":
        """Frozen eval-mode teacher that still returns its DLD distributions (``box_dfl``) when it has
        the auxiliary branch: the DFL KD term of a DLD student reads them (YOLOv6 §2.4)."""
        super().as_teacher()
        self.head.emit_dld_in_eval = True
        return self

    @float32_guard
    def distill_loss(self, student: RawOutputs, teacher: RawOutputs, targets: Sequence[Target],
                     weight: float = 1.0) -> dict[str, Tensor]:
        """YOLOv6 self-distillation: KL at temperature ``T`` on class scores (×T², × class weight) and
        on DFL distributions at the student's positives; ``weight`` is α(e) (:func:`cosine_distill_weight`)."""
        return yolov6_distill_loss(self, student, teacher, targets, weight)


# ----------------------------------------------------------------------------- builders
def build_yolov6(size: str, num_classes: int = 80, *, options: YOLOv6Options | None = None) -> YOLOv6:
    """Build ``yolov6_<size>`` with typed ``options`` (default: the variant's, :func:`default_options`)."""
    if size not in VARIANTS:
        raise ValueError(f"unknown YOLOv6 size {size!r}; expected one of {sorted(VARIANTS)}")
    opts = options or default_options(size)
    bb, head, tal = opts.backbone, opts.head, opts.assigner
    neck_csp_e = bb.csp_e if opts.neck.csp_e is None else opts.neck.csp_e
    cfg = dataclasses.replace(VARIANTS[size], block=bb.block, csp_e=bb.csp_e, neck_csp_e=neck_csp_e,
                              iou_loss=head.iou_loss)
    crit = {"atss_warmup_epochs": opts.atss_warmup_epochs, "tal_topk": tal.tal_topk, "tal_alpha": tal.tal_alpha,
            "tal_beta": tal.tal_beta, "atss_topk": tal.atss_topk, "aat_topk": tal.aat_topk}
    return YOLOv6(cfg, num_classes, reg_max=head.reg_max, anchor_aided=head.anchor_aided, dld=head.dld,
                  distill_feat=head.distill_feat, temperature=head.temperature,
                  distill_class_weight=head.distill_class_weight, criterion_kwargs=crit)


from . import yolov6_weights  # noqa: E402,F401  (registers the "yolov6" weight source)
