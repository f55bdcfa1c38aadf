"""Every published variant, registered without importing torch.

The variant tables and options live in the families' torch-free ``*_options`` modules; this module
turns each row into a registry entry (:func:`detmodels.registry.add_model`) whose builder is a
:class:`~detmodels.registry.LazyBuilder` naming the family's build function, so that looking a model
up (``get_model_entry``, ``list_models``, typed options, config validation) never imports torch and
``create_model`` imports one family's model code when it builds.

>>> from detmodels import get_model_entry
>>> entry = get_model_entry("yolov6_n6")
>>> entry.family, entry.input_size, entry.default_options.atss_warmup_epochs, entry.builder.target
('yolov6', 1280, 4, 'detmodels.families.yolov6:build_yolov6')
"""
from __future__ import annotations

from .families import rtmdet_options, spinenet_options, yolov3_asff_options, yolov6_options
from .registry import LazyBuilder, add_model

__all__ = ["FAMILY_MODULES"]

# The model code of each family (what a build imports), for tools that want every family loaded.
FAMILY_MODULES = ("detmodels.families.rtmdet", "detmodels.families.rtmdet_ins", "detmodels.families.spinenet",
                  "detmodels.families.yolov3_asff", "detmodels.families.yolov6")


def _rtmdet() -> None:
    """RTMDet and RTMDet-Ins, tiny … x (arXiv 2212.07784), 640 px, options shared."""
    for prefix, task, target in (("rtmdet", "bbox", "detmodels.families.rtmdet:build_rtmdet"),
                                 ("rtmdet_ins", "segm", "detmodels.families.rtmdet_ins:build_rtmdet_ins")):
        for size in rtmdet_options.RTMDET_CONFIGS:
            add_model(f"{prefix}_{size}", LazyBuilder.of(target, size=size), family="rtmdet", task=task,
                      input_size=640, size=size, recipe=prefix, options=rtmdet_options.RTMDetOptions)


def _spinenet() -> None:
    """SpineNet-49S … 190 + RetinaNet (arXiv 1912.05027), and ``spinenet``: any block spec."""
    for key, variant in spinenet_options.SPINENET_VARIANTS.items():
        add_model(f"spinenet_{key}", LazyBuilder.of("detmodels.families.spinenet:build_spinenet_variant", key=key),
                  family="spinenet", input_size=variant.input_size, size=key, recipe="retinanet",
                  options=spinenet_options.SpineNetOptions, default_options=spinenet_options.variant_options(key))
    add_model("spinenet", LazyBuilder.of("detmodels.families.spinenet:spinenet_from_spec"), family="spinenet",
              input_size=640, size="49", recipe="retinanet", options=spinenet_options.SpineNetOptions,
              takes_spec=True)


def _yolov3_asff() -> None:
    """YOLOv3 baseline, + ASFF, + ASFF* (arXiv 1911.09516), 608 px."""
    for name in yolov3_asff_options.YOLOV3_ASFF_VARIANTS:
        add_model(name, LazyBuilder.of("detmodels.families.yolov3_asff:build_yolov3_asff_variant", name=name),
                  family="yolov3_asff", input_size=yolov3_asff_options.INPUT_SIZE, size=name, recipe="yolov3_asff",
                  options=yolov3_asff_options.YOLOv3ASFFOptions,
                  default_options=yolov3_asff_options.variant_options(name))


def _yolov6() -> None:
    """YOLOv6 v3.0 N/S/M/L (640 px) and the P6 models N6 … L6 (1280 px) (arXiv 2301.05586)."""
    for size, cfg in yolov6_options.VARIANTS.items():
        add_model(f"yolov6_{size}", LazyBuilder.of("detmodels.families.yolov6:build_yolov6", size=size),
                  family="yolov6", input_size=1280 if cfg.p6 else 640, size=size, recipe="yolov6",
                  options=yolov6_options.YOLOv6Options, default_options=yolov6_options.default_options(size))


for _register in (_rtmdet, _spinenet, _yolov3_asff, _yolov6):
    _register()
