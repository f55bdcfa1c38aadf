"""Step adapters: one module per kind, each a thin ``run(params, ctx) -> outputs`` over a detflow API.

Outputs are JSON dicts; paths are absolute paths in the step's scratch (``ctx.path``) or stored
locations, and the task stores the scratch and rewrites them (:mod:`..execute`). Common keys: ``checkpoint`` (checkpoint dir),
``config`` (resolved training YAML), ``onnx`` (ONNX file), ``dataset`` (train/val JSON + images),
``metrics`` (numbers), ``table_csv``/``table_md``/``rows`` (benchmark), ``best_config``/``spec``.
"""
from __future__ import annotations

import copy
from typing import Any

from ..context import StepContext

__all__ = ["deep_merge", "split_of", "section_overrides", "checkpoint_config"]


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` updated recursively with ``over`` (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def split_of(ctx: StepContext, data: Any, which: str = "val") -> Any:
    """The ``which`` split of a step's dataset as a ``DatasetSplit`` (None when there is none); its
    paths may be stored locations (the COCO readers materialize them)."""
    from ...config.train import DatasetSplit

    split = ctx.dataset(data).get(which)
    return DatasetSplit(**split) if split else None


def checkpoint_config(checkpoint: str) -> dict:
    """The resolved TrainConfig dict stored next to a checkpoint (``config.yaml``), or {}."""
    from ... import artifact_store
    from ...config.base import read_yaml

    path = artifact_store.join(checkpoint, "config.yaml")
    return (read_yaml(artifact_store.materialize(path)) or {}) if artifact_store.exists(path) else {}


def section_overrides(params: Any, ctx: StepContext) -> dict:
    """TrainConfig-shaped overrides from the workflow defaults then the step's ``with`` sections."""
    out: dict = {}
    for layer in (ctx.defaults, _explicit(params)):
        model = layer.get("model")
        if model is not None:
            out = deep_merge(out, {"model": {"name": model} if isinstance(model, str) else model})
        for key, target in (("recipe", "recipe"), ("scaling", "scaling"), ("train", "train"),
                            ("checkpointing", "checkpoint")):
            if layer.get(key) is not None:
                out = deep_merge(out, {target: layer[key]})
        if layer.get("image_size") is not None:
            out = deep_merge(out, {"data": {"image_size": layer["image_size"]}})
    data = getattr(params, "data", None)
    resolved = ctx.dataset(data)
    if resolved.get("train"):
        out = deep_merge(out, {"data": {k: v for k, v in resolved.items() if v}})
    return out


def _explicit(params: Any) -> dict:
    """The ``with`` values the user set (defaults of the step class do not override the base)."""
    return params.model_dump(mode="json", exclude_unset=True)
