"""meituan/YOLOv6 checkpoint import (``load_official_weights(model, path, source="yolov6")``).

Reference key names are derived from *our* module tree: each of our classes states how its children
are called in the reference code, so training-form and deploy-form models map the same way
(e.g. ``conv3x3`` ↔ ``rbr_dense``, ``fused`` ↔ ``rbr_reparam``, a standalone ConvNormAct ``conv`` ↔
``block.conv``). Released ``.pt`` files pickle the whole module in fp16: they are read with
:mod:`detmodels.safe_unpickle`, which never imports or runs the pickled classes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..layers import SPPF, BepC3, BiC, BottleRep, ConvNormAct, RepBlock, RepVGGBlock, SimCSPSPPF
from ..safe_unpickle import read_module_state_dict
from ..weights import WeightsError, register_weight_source
from .yolov6_head import EfficientDecoupledHead

__all__ = ["reference_key_map", "convert_yolov6_state_dict", "load_yolov6_weights"]

# Reference entries that carry no learned state here (the fixed DFL projection).
_FIXED_KEYS = ("detect.proj", "detect.proj_conv.weight")

_CHILD_NAMES: list[tuple[type, dict[str, str]]] = [
    (RepVGGBlock, {"conv3x3": "rbr_dense", "conv1x1": "rbr_1x1", "identity": "rbr_identity", "fused": "rbr_reparam"}),
    (BottleRep, {"block1": "conv1", "block2": "conv2"}),
    (RepBlock, {"first": "conv1", "rest": "block"}),
    (BepC3, {"conv_main": "cv1", "conv_short": "cv2", "conv_out": "cv3", "blocks": "m"}),
    (SimCSPSPPF, {"pre1": "cspsppf.cv1", "shortcut": "cspsppf.cv2", "pre2": "cspsppf.cv3", "pre3": "cspsppf.cv4",
                  "post1": "cspsppf.cv5", "post2": "cspsppf.cv6", "fuse": "cspsppf.cv7"}),
    (SPPF, {"conv_in": "sppf.cv1", "conv_out": "sppf.cv2"}),
    (BiC, {"upsample": "upsample.upsample_transpose", "lateral": "cv1", "reduce_high": "cv2",
           "downsample": "downsample", "fuse": "cv3"}),
    (EfficientDecoupledHead, {"reg_preds_dfl": "reg_preds_dist"}),
]
_TOP_NAMES = {"head": "detect", **{f"stage{i}": f"ERBlock_{i}" for i in range(2, 7)}}
# RepBi-PAN blocks by number of output levels (the reference names them by pyramid level).
_NECK_NAMES = {
    3: {"top_down0": "Rep_p4", "top_down1": "Rep_p3", "down0": "downsample2", "bottom_up0": "Rep_n3",
        "down1": "downsample1", "bottom_up1": "Rep_n4"},
    4: {"top_down0": "Rep_p5", "top_down1": "Rep_p4", "top_down2": "Rep_p3", "down0": "downsample2",
        "bottom_up0": "Rep_n4", "down1": "downsample1", "bottom_up1": "Rep_n5", "down2": "downsample0",
        "bottom_up2": "Rep_n6"},
}


def _child_ref_name(parent: nn.Module, name: str) -> str:
    if hasattr(parent, "num_levels") and hasattr(parent, "bic0"):  # RepBiPAN
        if name.startswith(("reduce", "bic")):
            return name.replace("reduce", "reduce_layer").replace("bic", "Bifusion")
        return _NECK_NAMES[parent.num_levels][name]
    for cls, table in _CHILD_NAMES:
        if isinstance(parent, cls):
            return table.get(name, name)
    return _TOP_NAMES.get(name, name)


def _conv_norm_names(module: ConvNormAct, inside_repvgg: bool) -> dict[str, str]:
    # In a RepVGG branch the reference ConvModule is direct (conv, bn); elsewhere it is wrapped in `.block`.
    wrap = "" if inside_repvgg else "block."
    return {"conv": f"{wrap}conv", "norm": f"{wrap}bn"}


def reference_key_map(model: nn.Module) -> dict[str, str]:
    """``{our state-dict key: reference key}`` for every tensor of ``model``'s state dict."""
    out: dict[str, str] = {}

    def walk(module: nn.Module, ours: str, ref: str, inside_repvgg: bool) -> None:
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if name in module._non_persistent_buffers_set or tensor is None:
                continue
            out[ours + name] = ref + name
        for name, child in module.named_children():
            if isinstance(module, ConvNormAct):
                ref_child = _conv_norm_names(module, inside_repvgg).get(name, name)
            else:
                ref_child = _child_ref_name(module, name)
            walk(child, f"{ours}{name}.", f"{ref}{ref_child}.", isinstance(module, RepVGGBlock))

    walk(model, "", "", False)
    return out


def convert_yolov6_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a reference state dict onto ``model`` strictly (all keys used, shapes equal); dtypes follow the model."""
    mapping = reference_key_map(model)
    own = model.state_dict()
    inverse = {ref: ours for ours, ref in mapping.items()}
    extra = sorted(k for k in state if k not in inverse and k not in _FIXED_KEYS)
    missing = sorted(ref for ref in inverse if ref not in state)
    if extra or missing:
        hint = (" (a DLD/AAT checkpoint needs head={'dld': True} / {'anchor_aided': True}; a deploy checkpoint "
                "needs detmodels.reparameterize_model first)")
        raise WeightsError(f"yolov6 checkpoint does not match {type(model).__name__}: unexpected {extra[:8]}, "
                           f"missing {missing[:8]}{hint}")
    converted = {}
    for ref, ours in inverse.items():
        value = state[ref]
        if tuple(value.shape) != tuple(own[ours].shape):
            raise WeightsError(f"yolov6 checkpoint: {ref} has shape {tuple(value.shape)}, model {ours} expects "
                               f"{tuple(own[ours].shape)} (num_classes or size mismatch?)")
        converted[ours] = value.to(own[ours].dtype)
    return converted


@register_weight_source("yolov6")
def load_yolov6_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a meituan/YOLOv6 checkpoint (state dict or pickled-module ``.pt``; EMA weights preferred)."""
    state = read_module_state_dict(path)
    converted = convert_yolov6_state_dict(model, state)
    with torch.no_grad():
        model.load_state_dict(converted, strict=True)
    return model
