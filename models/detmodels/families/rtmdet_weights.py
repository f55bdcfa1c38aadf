"""Import of mmdetection's released RTMDet / RTMDet-Ins checkpoints (``source="mmdet"``).

mmdetection saves ``{"meta": …, "state_dict": {name: tensor}}``. Our module tree mirrors its
names (``backbone.stage1.1.main_conv.conv.weight`` …) except that a conv's BatchNorm is ``norm``
here and ``bn`` there, so the mapping is one rename; everything else is checked strictly.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ..weights import WeightsError, register_weight_source

__all__ = ["mmdet_to_detmodels_key", "detmodels_to_mmdet_key", "convert_mmdet_state_dict", "load_mmdet_weights"]

_PREFIXES = ("backbone.", "neck.", "bbox_head.")
_IGNORED_PREFIXES = ("data_preprocessor.",)  # normalisation buffers, not weights


def mmdet_to_detmodels_key(key: str) -> str:
    """``…conv_module.bn.weight`` → ``…conv_module.norm.weight``."""
    return re.sub(r"\.bn\.", ".norm.", key)


def detmodels_to_mmdet_key(key: str) -> str:
    """Inverse of :func:`mmdet_to_detmodels_key` (used to write reference-style test checkpoints)."""
    return re.sub(r"\.norm\.", ".bn.", key)


def convert_mmdet_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Map an mmdetection state dict onto ``model``'s keys, strictly.

    Raises:
        WeightsError: listing checkpoint keys with no counterpart, model keys left unfilled and
            shape mismatches.
    """
    ours = model.state_dict()
    mapped: dict[str, Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        if key.startswith(_IGNORED_PREFIXES):
            continue
        new = mmdet_to_detmodels_key(key)
        if not key.startswith(_PREFIXES) or new not in ours:
            unexpected.append(key)
        else:
            mapped[new] = value
    missing = sorted(set(ours) - set(mapped))
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
              for k, v in mapped.items() if tuple(v.shape) != tuple(ours[k].shape)]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint keys unused: {', '.join(sorted(unexpected)[:20])}")
    if missing:
        problems.append(f"{len(missing)} model keys not in checkpoint: {', '.join(missing[:20])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:20])}")
    if problems:
        raise WeightsError(f"{source}: cannot load as {type(model).__name__} (mmdet): " + " | ".join(problems))
    return mapped


@register_weight_source("mmdet")
def load_mmdet_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load an mmdetection RTMDet/RTMDet-Ins checkpoint file into ``model`` (strict)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: expected a dict with 'state_dict', got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    mapped = convert_mmdet_state_dict(model, state, str(path))
    model.load_state_dict(mapped, strict=True)
    return model
