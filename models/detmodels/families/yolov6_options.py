"""YOLOv6 v3.0 without torch: the scaling table (P5 and P6 rows) and the typed options.

The model code (:mod:`.yolov6`) and the torch-free catalog (:mod:`detmodels.catalog`) both read this
module, so the variants and their default options have one home.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

from ..options import FLAG, Options, family_options, integer, number, one_of, option, optional

__all__ = ["YOLOv6Config", "VARIANTS", "BASE_P5", "BASE_P6", "YOLOv6Options", "YOLOv6BackboneOptions",
           "YOLOv6NeckOptions", "YOLOv6HeadOptions", "TALOptions", "default_options"]

# Base channels / repeats before width / depth scaling (Y6 configs). Neck: (top-down reduce, outputs P3…).
BASE_P5 = {"backbone": (64, 128, 256, 512, 1024), "backbone_repeats": (1, 6, 12, 18, 6),
           "neck_reduce": (256, 128), "neck_out": (128, 256, 512), "neck_repeats": 12}
BASE_P6 = {"backbone": (64, 128, 256, 512, 768, 1024), "backbone_repeats": (1, 6, 12, 18, 6, 6),
           "neck_reduce": (512, 256, 128), "neck_out": (128, 256, 512, 1024), "neck_repeats": 12}


@dataclasses.dataclass(frozen=True)
class YOLOv6Config:
    """One row of the scaling table (Y6 ``configs/yolov6{n,s,m,l}{,6}.py``).

    Attributes:
        depth, width: multipliers of the base repeats / channels.
        csp_e: BepC3 hidden ratio for CSPBep models (M/L); ``None`` for EfficientRep (N/S).
        block: basic unit, ``repvgg`` or ``conv_silu`` (L).
        spp: ``simcspsppf``, ``simsppf`` or ``sppf``.
        reg_max: DFL bins − 1 (0 = plain distances).
        iou_loss: ``siou`` (N) or ``giou``.
        distill_class_weight: class-KD weight of self-distillation.
        p6: four output levels (strides 8–64, 1280 px) instead of three.
        neck_csp_e: BepC3 ratio of the neck when it differs from the backbone's.
    """

    depth: float
    width: float
    csp_e: float | None
    block: str
    spp: str
    reg_max: int
    iou_loss: str
    distill_class_weight: float
    p6: bool = False
    neck_csp_e: float | None = None  # None: same as csp_e

    @property
    def base(self) -> dict:
        return BASE_P6 if self.p6 else BASE_P5

    def ch(self, c: int) -> int:
        return math.ceil(c * self.width / 8) * 8

    def rep(self, n: int) -> int:
        return max(round(n * self.depth), 1) if n > 1 else n

    @property
    def strides(self) -> tuple[int, ...]:
        return (8, 16, 32, 64) if self.p6 else (8, 16, 32)


VARIANTS: dict[str, YOLOv6Config] = {
    "n": YOLOv6Config(0.33, 0.25, None, "repvgg", "simcspsppf", 0, "siou", 1.0),
    "s": YOLOv6Config(0.33, 0.50, None, "repvgg", "simcspsppf", 0, "giou", 1.0),
    "m": YOLOv6Config(0.60, 0.75, 2 / 3, "repvgg", "simsppf", 16, "giou", 0.8),
    "l": YOLOv6Config(1.0, 1.0, 1 / 2, "conv_silu", "sppf", 16, "giou", 2.0),
    "n6": YOLOv6Config(0.33, 0.25, None, "repvgg", "simcspsppf", 0, "siou", 1.0, p6=True),
    "s6": YOLOv6Config(0.33, 0.50, None, "repvgg", "simcspsppf", 0, "giou", 1.0, p6=True),
    "m6": YOLOv6Config(0.60, 0.75, 2 / 3, "repvgg", "simsppf", 16, "giou", 0.8, p6=True),
    "l6": YOLOv6Config(1.0, 1.0, 1 / 2, "conv_silu", "sppf", 16, "giou", 2.0, p6=True),
}




_CSP_E = optional(number(gt=0, le=1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class YOLOv6BackboneOptions(Options):
    """Basic unit and BepC3 ratio ``csp_e`` in (0, 1]; ``null`` = EfficientRep (RepBlocks, N/S), a
    ratio = CSPBep (M 2/3, L 1/2). ``block``: ``repvgg`` (RepVGG, ReLU), ``conv_silu`` (plain conv, L),
    ``hyper_search`` (CSLA blocks with trainable scales, the first stage of RepOpt training) or
    ``repopt`` (plain 3×3 conv + BN + ReLU trained with RepOptimizer, the second stage;
    docs/yolov6-quantization.md)."""

    block: Literal["repvgg", "conv_silu", "hyper_search", "repopt"] = option(
        "repvgg", one_of("repvgg", "conv_silu", "hyper_search", "repopt"))
    csp_e: float | None = option(None, _CSP_E)


@dataclasses.dataclass(frozen=True, kw_only=True)
class YOLOv6NeckOptions(Options):
    """RepBi-PAN BepC3 ratio ``csp_e`` in (0, 1]; ``null``: the backbone's."""

    csp_e: float | None = option(None, _CSP_E)


@dataclasses.dataclass(frozen=True, kw_only=True)
class YOLOv6HeadOptions(Options):
    """Efficient Decoupled Head and its losses: ``anchor_aided`` (AAT), ``dld`` (DLD branch),
    ``reg_max`` (DFL bins − 1, 0 = plain distances), ``iou_loss``, self-distillation
    ``temperature``, ``distill_class_weight`` and ``distill_feat`` (channel-wise feature KD)."""

    anchor_aided: bool = option(False, FLAG)
    dld: bool = option(False, FLAG)
    reg_max: int = option(0, integer(0))
    iou_loss: Literal["siou", "giou"] = option("siou", one_of("siou", "giou"))
    temperature: float = option(20.0, number(gt=0))
    distill_class_weight: float = option(1.0, number(ge=0))
    distill_feat: bool = option(False, FLAG)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TALOptions(Options):
    """Task-aligned assigner (topk 13, t = s^α·IoU^β with α 1, β 6), the ATSS warm-up assigner's
    ``atss_topk`` (9) and the AAT branch's TAL ``aat_topk`` (26)."""

    tal_topk: int = option(13, integer(1))
    tal_alpha: float = option(1.0, number(ge=0))
    tal_beta: float = option(6.0, number(ge=0))
    atss_topk: int = option(9, integer(1))
    aat_topk: int = option(26, integer(1))


@family_options("yolov6", backbone=YOLOv6BackboneOptions, neck=YOLOv6NeckOptions, head=YOLOv6HeadOptions,
                assigner=TALOptions)
class YOLOv6Options(Options):
    """Every option of a YOLOv6 model; ``atss_warmup_epochs``: epochs assigned by ATSS before TAL
    (Y6 configs: 0 for P5, 4 for P6)."""

    atss_warmup_epochs: int = option(0, integer(0))


def default_options(size: str) -> YOLOv6Options:
    """The paper's options of ``yolov6_<size>`` (from its row of :data:`VARIANTS`)."""
    cfg = VARIANTS[size]
    return YOLOv6Options(
        backbone=YOLOv6BackboneOptions(block=cfg.block, csp_e=cfg.csp_e),
        neck=YOLOv6NeckOptions(csp_e=cfg.neck_csp_e),
        head=YOLOv6HeadOptions(reg_max=cfg.reg_max, iou_loss=cfg.iou_loss,
                               distill_class_weight=cfg.distill_class_weight),
        atss_warmup_epochs=4 if cfg.p6 else 0)  # Y6 configs: ATSS warm-up only for the P6 models
