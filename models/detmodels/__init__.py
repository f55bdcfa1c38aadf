"""detmodels: real-time detectors in pure PyTorch (RTMDet, YOLOv6 v3.0, SpineNet-RetinaNet, YOLOv3-ASFF).

The platform (`detflow`) uses what this module exports: the registry (``create_model``,
``list_models``, ``get_model_entry``), each family's typed options (``RTMDetOptions``,
``YOLOv6Options``, ``SpineNetOptions``, ``YOLOv3ASFFOptions`` and their sections) with the YAML
helpers ``options_from_dict`` / ``options_to_dict`` / ``option_paths``, and the SpineNet spec API that
architecture search needs.

``import detmodels`` imports no torch: the registry, the options and the SpineNet spec API are plain
Python (:mod:`detmodels.catalog` lists the variants), and the names that need torch (``Detector``,
``reparameterize_model``, ``count_params``, ``Detections``…) are imported on first access (PEP 562).
``create_model`` imports the family it builds.

>>> import detmodels, torch
>>> model = detmodels.create_model("rtmdet_tiny", num_classes=3,
...                                neck=detmodels.RTMDetNeckOptions(expand_ratio=0.75))
>>> sorted(model(torch.zeros(1, 3, 64, 64)))
['box', 'cls']
>>> detmodels.options_from_dict(detmodels.YOLOv6Options, {"assigner": {"tal_topk": 9}}).assigner.tal_topk
9
"""
from __future__ import annotations

import importlib
from typing import Any

from .families.rtmdet_options import DSLOptions, RTMDetHeadOptions, RTMDetNeckOptions, RTMDetOptions
from .families.spinenet_options import (SPINENET_VARIANTS, MaxIoUOptions, RetinaNetHeadOptions,
                                        SpineNetBackboneOptions, SpineNetOptions, SpineNetVariant)
from .families.spinenet_spec import (NUM_STEM_BLOCKS, BlockSpec, ScaleSettings, SpecError, SpineNetSpec, load_spec,
                                     save_spec, spec_from_dict, spec_to_dict, spinenet49_spec, validate_spec)
from .families.yolov3_asff_options import YOLOv3ASFFHeadOptions, YOLOv3ASFFNeckOptions, YOLOv3ASFFOptions
from .families.yolov6_options import (TALOptions, YOLOv6BackboneOptions, YOLOv6HeadOptions, YOLOv6NeckOptions,
                                      YOLOv6Options)
from .options import OptionError, option_paths, options_from_dict, options_to_dict
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model, variant_options

__version__ = "0.1.0"

# Names that need torch: public name -> submodule, imported on first access.
_LAZY = {
    "Detector": "base", "RawOutputs": "base",
    "Detections": "structures", "InputSpec": "structures", "Target": "structures",
    "reparameterize_model": "reparam", "load_official_weights": "weights",
    "count_params": "info", "count_macs": "info", "dense_postprocess": "ops",
    "dense_instance_postprocess": "families.rtmdet_ins", "INSTANCE_OUTPUT_NAMES": "families.rtmdet_ins",
    "channel_wise_distill": "families.yolov6_distill",
    "LinearAddBlock": "layers.repopt", "RealVGGBlock": "layers.repopt",
    **dict.fromkeys(("RepOptimizer", "extract_scales", "scales_from_state_dict", "check_scales", "init_from_scales_",
                     "grad_masks"), "repopt"),
}

__all__ = [
    "Detector", "RawOutputs", "Detections", "InputSpec", "Target", "ModelEntry",
    "create_model", "list_models", "get_model_entry", "register_model",
    "reparameterize_model", "load_official_weights", "count_params", "count_macs",
    "dense_postprocess",  # decoding of exported graphs without NMS inside (detflow.bench)
    "dense_instance_postprocess", "INSTANCE_OUTPUT_NAMES",  # the same with instance masks (RTMDet-Ins graphs)
    "channel_wise_distill",  # CWD feature distillation (Shu et al. 2021): detflow's QAT distils with it
    # RepOpt (YOLOv6 quantization-friendly training, docs/yolov6-quantization.md)
    "LinearAddBlock", "RealVGGBlock", "RepOptimizer", "extract_scales", "scales_from_state_dict", "check_scales",
    "init_from_scales_", "grad_masks",
    # typed options
    "OptionError", "variant_options", "options_from_dict", "options_to_dict", "option_paths",
    "RTMDetOptions", "RTMDetNeckOptions", "RTMDetHeadOptions", "DSLOptions",
    "YOLOv6Options", "YOLOv6BackboneOptions", "YOLOv6NeckOptions", "YOLOv6HeadOptions", "TALOptions",
    "SpineNetOptions", "SpineNetBackboneOptions", "RetinaNetHeadOptions", "MaxIoUOptions",
    "YOLOv3ASFFOptions", "YOLOv3ASFFNeckOptions", "YOLOv3ASFFHeadOptions",
    # SpineNet as data (architecture search)
    "SpineNetSpec", "BlockSpec", "ScaleSettings", "SpecError", "NUM_STEM_BLOCKS", "spinenet49_spec",
    "validate_spec", "spec_from_dict", "spec_to_dict", "load_spec", "save_spec", "SPINENET_VARIANTS",
    "SpineNetVariant",
]


def __getattr__(name: str) -> Any:
    """The torch-backed names of :data:`_LAZY`, imported (and cached here) on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
