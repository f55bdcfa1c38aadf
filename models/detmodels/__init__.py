"""detmodels: real-time detectors in pure PyTorch (RTMDet, YOLOv6 v3.0, SpineNet-RetinaNet, YOLOv3-ASFF).

Only torch (and numpy) are imported here; the platform (`detflow`) uses what this module exports.

>>> import detmodels
>>> model = detmodels.create_model("rtmdet_tiny", num_classes=3)
>>> sorted(model(torch.zeros(1, 3, 64, 64)))  # doctest: +SKIP
['box', 'cls']
"""
from .base import Detector, RawOutputs
from .info import count_macs, count_params
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model
from .reparam import reparameterize_model
from .structures import Detections, InputSpec, Target
from .weights import load_official_weights

__version__ = "0.1.0"

__all__ = [
    "Detector", "RawOutputs", "Detections", "InputSpec", "Target", "ModelEntry",
    "create_model", "list_models", "get_model_entry", "register_model",
    "reparameterize_model", "load_official_weights", "count_params", "count_macs",
]
