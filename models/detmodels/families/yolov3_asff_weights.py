"""``load_official_weights(model, path, source="asff")``: checkpoints of the ASFF repository
(GOATmessi7/ASFF, formerly ruinmessi/ASFF) — a plain state dict, sometimes under ``"model"``,
possibly with DataParallel ``module.`` prefixes — mapped onto :class:`YOLOv3ASFF` key names.

Reference layout: ``module_list.<i>`` (Darknet-53 and neck in one list; the baseline also holds
its three heads there), ``level_<l>_fusion`` / ``level_<l>_header`` (ASFF), ``batch_norm`` for BN.
Reference level ``l`` (0 = stride 32) is our index ``2 − l``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..weights import WeightsError, register_weight_source

__all__ = ["asff_key_map", "convert_asff_state_dict", "load_asff_weights"]

# module_list indices shared by both layouts: Darknet-53 and the neck down to F32 (out5).
_BACKBONE = {0: "backbone.stem", 1: "backbone.stages.0.down", 3: "backbone.stages.1.down",
             5: "backbone.stages.2.down", 7: "backbone.stages.3.down", 9: "backbone.stages.4.down",
             12: "neck.reduce5", 14: "neck.spp_conv", 15: "neck.conv5", 17: "neck.out5"}
# Residual groups: "{m}" is the block index inside the group (the neck's groups hold one block).
_RES = {2: "backbone.stages.0.blocks.{m}", 4: "backbone.stages.1.blocks.{m}", 6: "backbone.stages.2.blocks.{m}",
        8: "backbone.stages.3.blocks.{m}", 10: "backbone.stages.4.blocks.{m}", 11: "neck.block5"}
_ASFF_NECK = {18: "neck.lateral4", 20: "neck.fuse4", 21: "neck.conv4", 24: "neck.out4", 25: "neck.lateral3",
              27: "neck.fuse3", 28: "neck.conv3", 31: "neck.out3", 32: "neck.expand3"}
_ASFF_RES = {23: "neck.block4", 30: "neck.block3"}
_BASE_NECK = {18: "fusions.2", 20: "neck.lateral4", 22: "neck.fuse4", 23: "neck.conv4", 26: "neck.out4",
              27: "fusions.1", 29: "neck.lateral3", 31: "neck.fuse3", 32: "neck.conv3", 35: "neck.out3",
              36: "neck.expand3"}
_BASE_RES = {25: "neck.block4", 34: "neck.block3"}
_BASE_HEADS = {19: "heads.2", 28: "heads.1", 37: "heads.0"}
_RESIZE = {"stride_level_1": "resize.1.conv", "stride_level_2": "resize.2.conv", "compress_level_0": "resize.0.conv"}


def _head_suffix(rest: str) -> str:
    rest = rest.replace("Feature_adaption.", "adaption.")
    rest = re.sub(r"^adaption\.rfb\.branch_(\d)\.", r"adaption.rfb.branches.\1.", rest)
    return re.sub(r"^conv\.", "pred.", rest)


def _fusion_suffix(rest: str) -> str:
    for ref, ours in _RESIZE.items():
        if rest.startswith(ref + "."):
            return ours + rest[len(ref):]
    return re.sub(r"^weight_level_(\d)\.", r"weight_convs.\1.", rest)


def _module_list_key(index: int, rest: str, asff: bool) -> str | None:
    plain = {**_BACKBONE, **(_ASFF_NECK if asff else _BASE_NECK)}
    res = {**_RES, **(_ASFF_RES if asff else _BASE_RES)}
    if index in plain:
        return f"{plain[index]}.{rest}"
    if index in res:
        m = re.match(r"module_list\.(\d+)\.([01])\.(.*)", rest)
        if m is None or ("{m}" not in res[index] and m.group(1) != "0"):
            return None
        return f"{res[index].format(m=m.group(1))}.conv{int(m.group(2)) + 1}.{m.group(3)}"
    if not asff and index in _BASE_HEADS:
        return f"{_BASE_HEADS[index]}.{_head_suffix(rest)}"
    return None


def asff_key_map(ref_key: str, asff: bool) -> str | None:
    """Our key for one reference key (``None`` when it has no counterpart)."""
    key = ref_key.replace(".batch_norm.", ".norm.")
    m = re.match(r"module_list\.(\d+)\.(.*)", key)
    if m:
        return _module_list_key(int(m.group(1)), m.group(2), asff)
    m = re.match(r"level_(\d)_(fusion|header)\.(.*)", key)
    if m and asff:
        idx = 2 - int(m.group(1))
        if m.group(2) == "fusion":
            return f"fusions.{idx}.{_fusion_suffix(m.group(3))}"
        return f"heads.{idx}.{_head_suffix(m.group(3))}"
    return None


def convert_asff_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename and check every tensor of a reference state dict; raises :class:`WeightsError` listing
    unmapped, missing or mis-shaped keys."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    is_asff = any(k.startswith("level_") for k in state)
    if is_asff != bool(getattr(model, "asff", False)):
        kind = "an ASFF" if is_asff else "a baseline"
        raise WeightsError(f"checkpoint is {kind} YOLOv3 but the model has asff={getattr(model, 'asff', None)}")
    ours = model.state_dict()
    out, unmapped, bad_shape = {}, [], []
    for k, v in state.items():
        new = asff_key_map(k, is_asff)
        if new is None or new not in ours:
            unmapped.append(k)
        elif tuple(ours[new].shape) != tuple(v.shape):
            bad_shape.append(f"{k} {tuple(v.shape)} → {new} {tuple(ours[new].shape)}")
        else:
            out[new] = v
    missing = sorted(set(ours) - set(out))
    if unmapped or bad_shape or missing:
        raise WeightsError(f"ASFF checkpoint does not fit: unmapped {unmapped[:8]}, shape mismatches "
                           f"{bad_shape[:8]}, missing {missing[:8]}")
    return out


@register_weight_source("asff")
def load_asff_weights(model: nn.Module, path: Path) -> nn.Module:
    """Read ``path`` with ``weights_only=True`` and load it strictly into ``model``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: expected a state dict (or {{'model': state dict}}), got {type(ckpt).__name__}")
    model.load_state_dict(convert_asff_state_dict(ckpt, model), strict=True)
    return model
