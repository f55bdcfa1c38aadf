"""YOLOv3-ASFF without torch: the three variants of the paper and the typed options.

The model code (:mod:`.yolov3_asff`) and the torch-free catalog (:mod:`detmodels.catalog`) both read
this module, so the variants and their default options have one home.
"""
from __future__ import annotations

import dataclasses

from ..options import FLAG, Options, family_options, number, option

__all__ = ["YOLOv3ASFFVariant", "YOLOV3_ASFF_VARIANTS", "YOLOv3ASFFOptions", "YOLOv3ASFFNeckOptions",
           "YOLOv3ASFFHeadOptions", "variant_options"]

INPUT_SIZE = 608


@dataclasses.dataclass(frozen=True)
class YOLOv3ASFFVariant:
    """One model of the paper (arXiv 1911.09516): with ``asff`` fusion, with ``rfb`` (ASFF*, whose
    reference command also turns DropBlock on), and its title."""

    asff: bool
    rfb: bool
    title: str


YOLOV3_ASFF_VARIANTS: dict[str, YOLOv3ASFFVariant] = {
    "yolov3": YOLOv3ASFFVariant(False, False, "YOLOv3 strong baseline of the ASFF paper"),
    "yolov3_asff": YOLOv3ASFFVariant(True, False, "YOLOv3 + ASFF"),
    "yolov3_asff_rfb": YOLOv3ASFFVariant(True, True, "YOLOv3 + ASFF* (ASFF + RFB + DropBlock)"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class YOLOv3ASFFNeckOptions(Options):
    """``dropblock``: DropBlock in the neck (on for ASFF* only, as the reference README's command)."""

    dropblock: bool = option(False, FLAG)


@dataclasses.dataclass(frozen=True, kw_only=True)
class YOLOv3ASFFHeadOptions(Options):
    """Loss options of the reference: ``ignore_thr`` (``IGNORETHRE`` 0.7, in [0, 1]) and
    ``label_smooth`` (``LABAL_SMOOTH``)."""

    ignore_thr: float = option(0.7, number(ge=0, le=1))
    label_smooth: bool = option(True, FLAG)


@family_options("yolov3_asff", neck=YOLOv3ASFFNeckOptions, head=YOLOv3ASFFHeadOptions)
class YOLOv3ASFFOptions:
    """Every option of a YOLOv3(-ASFF) model; the Darknet-53 backbone has none."""


def variant_options(name: str) -> YOLOv3ASFFOptions:
    """The default options of variant ``name``: DropBlock in the neck for ASFF* only."""
    return YOLOv3ASFFOptions(neck=YOLOv3ASFFNeckOptions(dropblock=YOLOV3_ASFF_VARIANTS[name].rfb))
