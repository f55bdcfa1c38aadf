"""detmodels: real-time detectors in pure PyTorch (RTMDet, YOLOv6 v3.0, SpineNet-RetinaNet, YOLOv3-ASFF).

Only torch (and numpy) are imported here; the platform (`detflow`) uses what this module exports:
the registry (``create_model``, ``list_models``, ``get_model_entry``), each family's typed options
(``RTMDetOptions``, ``YOLOv6Options``, ``SpineNetOptions``, ``YOLOv3ASFFOptions`` and their
sections) with the YAML helpers ``options_from_dict`` / ``options_to_dict`` / ``option_paths``,
and the SpineNet spec API that architecture search needs.

>>> import detmodels, torch
>>> model = detmodels.create_model("rtmdet_tiny", num_classes=3,
...                                neck=detmodels.RTMDetNeckOptions(expand_ratio=0.75))
>>> sorted(model(torch.zeros(1, 3, 64, 64)))
['box', 'cls']
>>> detmodels.options_from_dict(detmodels.YOLOv6Options, {"assigner": {"tal_topk": 9}}).assigner.tal_topk
9
"""
from .base import Detector, RawOutputs
from .families.rtmdet import DSLOptions, RTMDetHeadOptions, RTMDetNeckOptions, RTMDetOptions
from .families.spinenet import (SPINENET_VARIANTS, MaxIoUOptions, RetinaNetHeadOptions, SpineNetBackboneOptions,
                                SpineNetOptions, SpineNetVariant)
from .families.spinenet_spec import (NUM_STEM_BLOCKS, BlockSpec, ScaleSettings, SpecError, SpineNetSpec, load_spec,
                                     save_spec, spec_from_dict, spec_to_dict, spinenet49_spec, validate_spec)
from .families.yolov3_asff import YOLOv3ASFFHeadOptions, YOLOv3ASFFNeckOptions, YOLOv3ASFFOptions
from .families.yolov6 import (TALOptions, YOLOv6BackboneOptions, YOLOv6HeadOptions, YOLOv6NeckOptions,
                              YOLOv6Options)
from .info import count_macs, count_params
from .ops import dense_postprocess
from .options import OptionError, option_paths, options_from_dict, options_to_dict
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model, variant_options
from .reparam import reparameterize_model
from .structures import Detections, InputSpec, Target
from .weights import load_official_weights

__version__ = "0.1.0"

__all__ = [
    "Detector", "RawOutputs", "Detections", "InputSpec", "Target", "ModelEntry",
    "create_model", "list_models", "get_model_entry", "register_model",
    "reparameterize_model", "load_official_weights", "count_params", "count_macs",
    "dense_postprocess",  # decoding of exported graphs without NMS inside (detflow.bench)
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
