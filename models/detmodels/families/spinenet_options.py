"""SpineNet-RetinaNet without torch: the published variants (scale settings, head, anchors, input
size) and the typed options.

The model code (:mod:`.spinenet`) and the torch-free catalog (:mod:`detmodels.catalog`) both read this
module, so the variants and their default options have one home.
"""
from __future__ import annotations

import dataclasses

from ..options import (FLAG, Options, Rule, check, family_options, integer, is_number, number, one_of, option,
                       optional)
from .spinenet_spec import ScaleSettings

__all__ = ["SpineNetVariant", "SPINENET_VARIANTS", "SpineNetOptions", "SpineNetBackboneOptions",
           "RetinaNetHeadOptions", "MaxIoUOptions", "variant_options"]


@dataclasses.dataclass(frozen=True)
class SpineNetVariant:
    """A published size (§4.3 of the reference notes; TPU ``spinenet*_retinanet.yaml``)."""

    scale: ScaleSettings
    head_convs: int
    head_filters: int
    anchor_size: float
    input_size: int


# SpineNet-49S follows the code's SCALING_MAP (128-d endpoints → 11.27 M with 91 classes), not the
# model zoo's 11.9 M (256-d endpoints); see the module docstring.
SPINENET_VARIANTS: dict[str, SpineNetVariant] = {
    "49s": SpineNetVariant(ScaleSettings(0.65, 1, 0.5, 128), 4, 128, 3.0, 640),
    "49": SpineNetVariant(ScaleSettings(1.0, 1, 0.5, 256), 4, 256, 3.0, 640),
    "96": SpineNetVariant(ScaleSettings(1.0, 2, 0.5, 256), 4, 256, 3.0, 1024),
    "143": SpineNetVariant(ScaleSettings(1.0, 3, 1.0, 256), 4, 256, 4.0, 1280),
    "190": SpineNetVariant(ScaleSettings(1.3, 4, 1.0, 512), 7, 512, 4.0, 1280),
}




@dataclasses.dataclass(frozen=True, kw_only=True)
class SpineNetBackboneOptions(Options):
    """Scale settings (§3.3; ``null``: the variant's, or the spec's ``scale`` for ``spinenet``),
    ``stochastic_depth_rate`` in [0, 1) and the ``activation`` (``swish`` / ``relu``)."""

    filter_size_scale: float | None = option(None, optional(number(gt=0)))
    block_repeats: int | None = option(None, optional(integer(1)))
    resample_alpha: float | None = option(None, optional(number(gt=0)))
    endpoints_num_filters: int | None = option(None, optional(integer(1)))
    stochastic_depth_rate: float = option(0.2, number(ge=0, lt=1))
    activation: str = option("swish", one_of("swish", "silu", "relu"))

    def scale(self, base: ScaleSettings) -> ScaleSettings:
        """``base`` with the fields set here replaced."""
        names = [f.name for f in dataclasses.fields(ScaleSettings)]
        return dataclasses.replace(base, **{n: getattr(self, n) for n in names if getattr(self, n) is not None})


_ASPECT_RATIOS = Rule(lambda r: isinstance(r, tuple) and len(r) > 0 and all(is_number(x) and x > 0 for x in r),
                      "a non-empty list of numbers > 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetinaNetHeadOptions(Options):
    """RetinaNet head and losses: ``num_convs`` × ``num_filters`` (``null``: the endpoint width),
    anchors (``anchor_size`` · stride, ``num_scales`` octave scales, ``aspect_ratios``), focal α/γ,
    Huber δ, box loss weight, top-k boxes before NMS."""

    num_convs: int = option(4, integer(1))
    num_filters: int | None = option(None, optional(integer(1)))
    anchor_size: float = option(3.0, number(gt=0))
    num_scales: int = option(3, integer(1))
    aspect_ratios: tuple[float, ...] = option((1.0, 2.0, 0.5), _ASPECT_RATIOS)
    focal_alpha: float = option(0.25, number(ge=0, le=1))
    focal_gamma: float = option(1.5, number(ge=0))
    huber_delta: float = option(0.1, number(gt=0))
    box_loss_weight: float = option(50.0, number(ge=0))
    pre_nms_topk: int = option(5000, integer(1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaxIoUOptions(Options):
    """Max-IoU matching: positive at IoU >= ``pos_iou_thr``, negative below ``neg_iou_thr``
    (0 <= neg <= pos <= 1), ``force_match`` every GT to its best anchor."""

    pos_iou_thr: float = option(0.5, number(ge=0, le=1))
    neg_iou_thr: float = 0.5  # its bound is pos_iou_thr: checked in __post_init__
    force_match: bool = option(True, FLAG)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "neg_iou_thr", is_number(self.neg_iou_thr) and 0 <= self.neg_iou_thr <= self.pos_iou_thr,
              f"a number in [0, pos_iou_thr={self.pos_iou_thr}]")


@family_options("spinenet", backbone=SpineNetBackboneOptions, head=RetinaNetHeadOptions, assigner=MaxIoUOptions)
class SpineNetOptions:
    """Every option of a SpineNet-RetinaNet (no neck: the backbone feeds the head directly)."""


def variant_options(key: str) -> SpineNetOptions:
    """The published options of ``spinenet_<key>`` (scale, head width/depth, anchor size)."""
    v = SPINENET_VARIANTS[key]
    backbone = SpineNetBackboneOptions(**dataclasses.asdict(v.scale))
    head = RetinaNetHeadOptions(num_convs=v.head_convs, num_filters=v.head_filters, anchor_size=v.anchor_size)
    return SpineNetOptions(backbone=backbone, head=head)
