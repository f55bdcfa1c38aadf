"""RTMDet / RTMDet-Ins without torch: the compound-scaling table and the typed options.

The model code (:mod:`.rtmdet`, :mod:`.rtmdet_ins`) and the torch-free catalog
(:mod:`detmodels.catalog`) both read this module, so the sizes and the options have one home.
"""
from __future__ import annotations

import dataclasses

from ..options import FLAG, Options, family_options, integer, number, option

__all__ = ["RTMDetConfig", "RTMDET_CONFIGS", "RTMDetOptions", "RTMDetNeckOptions", "RTMDetHeadOptions",
           "DSLOptions"]


@dataclasses.dataclass(frozen=True)
class RTMDetConfig:
    """One size of the paper's compound scaling (§3.1): channels ``int(c × widen)``, blocks
    ``max(round(n × deepen), 1)``; neck CSP blocks ``max(round(3 × deepen), 1)``.

    ``backbone_init`` is the backbone's from-scratch initialisation in mmdetection (see
    :meth:`CSPNeXt.init_weights`): ``"kaiming_uniform"`` (CSPNeXt's ``init_cfg``; sizes m, l, x,
    whose configs keep it) or ``"conv_module"`` (sizes tiny, s: their configs replace that
    ``init_cfg`` by an ImageNet checkpoint, so without it the convs keep mmcv ConvModule's own init).
    """

    deepen: float
    widen: float
    exp_on_reg: bool = False
    backbone_init: str = "kaiming_uniform"

    def channels(self, c: int) -> int:
        return int(c * self.widen)

    def blocks(self, n: int) -> int:
        return max(round(n * self.deepen), 1)


RTMDET_CONFIGS: dict[str, RTMDetConfig] = {
    "tiny": RTMDetConfig(0.167, 0.375, backbone_init="conv_module"),
    "s": RTMDetConfig(0.33, 0.5, backbone_init="conv_module"),
    "m": RTMDetConfig(0.67, 0.75),
    "l": RTMDetConfig(1.0, 1.0, exp_on_reg=True),
    "x": RTMDetConfig(1.33, 1.25, exp_on_reg=True),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RTMDetNeckOptions(Options):
    """CSPNeXtPAFPN knobs (searched by sweeps): CSP ``expand_ratio`` in (0, 2]; ``se`` adds a
    SqueezeExcitation after every CSP layer; ``ppm`` a PyramidPoolingModule on C5."""

    expand_ratio: float = option(0.5, number(gt=0, le=2))
    se: bool = option(False, FLAG)
    ppm: bool = option(False, FLAG)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RTMDetHeadOptions(Options):
    """Loss weights (§3.2): QFL 1, GIoU 2, Dice (RTMDet-Ins) 2; each >= 0."""

    loss_cls_weight: float = option(1.0, number(ge=0))
    loss_bbox_weight: float = option(2.0, number(ge=0))
    loss_mask_weight: float = option(2.0, number(ge=0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DSLOptions(Options):
    """Dynamic soft-label assignment (§3.2): centre cost α^(d − β), ``topk`` IoUs for dynamic k,
    IoU cost weight.

    The one rule for α is α > 1: the cost must grow with the distance d (α = 1 switches the
    prior off, α < 1 would prefer far priors); the paper uses α = 10, β = 3.
    """

    soft_center_alpha: float = option(10.0, number(gt=1))
    soft_center_beta: float = option(3.0, number(ge=0))
    topk: int = option(13, integer(1))
    iou_weight: float = option(3.0, number(ge=0))


@family_options("rtmdet", neck=RTMDetNeckOptions, head=RTMDetHeadOptions, assigner=DSLOptions)
class RTMDetOptions:
    """Every option of an RTMDet / RTMDet-Ins model (YAML ``model.neck|head|assigner``)."""
