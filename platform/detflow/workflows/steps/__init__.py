"""Step adapters: one module per kind, each a thin ``run(params, ctx) -> outputs`` over a detflow API.

Outputs are JSON dicts; paths are absolute paths in the step's scratch (``ctx.path``) or stored
locations, and the task stores the scratch and rewrites them (:mod:`..execute`). Common keys: ``checkpoint`` (checkpoint dir),
``config`` (resolved training YAML), ``onnx`` (ONNX file), ``dataset`` (train/val JSON + images),
``metrics`` (numbers), ``table_csv``/``table_md``/``rows`` (benchmark), ``best_config``/``spec``.
"""
from __future__ import annotations

from typing import Any

from ...config.compose import Layer, layer_values, without_variant_defaults
from ..context import StepContext

__all__ = ["split_of", "section_layers", "checkpoint_config", "TRAIN_SECTIONS"]

# The TrainConfig sections a workflow's ``defaults`` and a train-like step's ``with`` may set, under
# TrainConfig's own names; ``model: NAME`` is short for ``model: {name: NAME}``, ``image_size`` sets
# ``data.image_size`` (``data`` names the dataset: an upstream step or {train, val} paths).
TRAIN_SECTIONS = ("model", "recipe", "train", "scaling", "checkpoint")


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


def section_layers(params: Any, ctx: StepContext) -> list[Layer]:
    """The overlays of a train-like step's base config, in order: the workflow ``defaults``, the
    step's ``with`` sections (only the values written: a step class's defaults do not override the
    base), and the dataset the step resolves (``data: STEP`` or paths)."""
    step = f"step {ctx.step_id!r}"
    layers = [Layer(_sections(ctx.defaults), "workflow defaults"),
              Layer(_sections(layer_values(params)), f"{step} (with)")]
    resolved = ctx.dataset(getattr(params, "data", None))
    if resolved.get("train"):
        layers.append(Layer({"data": {k: v for k, v in resolved.items() if v}}, f"{step} (data)"))
    return layers


def _sections(values: dict) -> dict:
    """The TrainConfig-shaped part of a ``defaults`` / ``with`` mapping."""
    out = {key: values[key] for key in TRAIN_SECTIONS if values.get(key) is not None}
    if isinstance(out.get("model"), str):
        out["model"] = {"name": out["model"]}
    elif isinstance(out.get("model"), dict):  # a validated section: drop the variant defaults it was filled with
        out["model"] = without_variant_defaults(out["model"])
    if values.get("image_size") is not None:
        out["data.image_size"] = values["image_size"]
    return out
