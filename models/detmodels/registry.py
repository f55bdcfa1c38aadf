"""Model registry: one registered builder per variant name (timm/torchvision style).

``create_model(name, num_classes=80, **overrides)`` is the single entry point. A variant is
registered with :func:`register_model`; registering a name twice is an error.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_model_entry"]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of a variant without building it.

    Attributes:
        name: registered name, e.g. ``rtmdet_tiny``.
        family: ``rtmdet``, ``yolov6``, ``spinenet`` or ``yolov3_asff``.
        task: ``bbox`` (detection) or ``segm`` (instance segmentation).
        input_size: the paper's default square input size (pixels).
        builder: ``builder(num_classes=..., **overrides) -> nn.Module``.
        size: the variant's size key in its family's table (``tiny``, ``s``, ``n6``, ``49``, ``asff``…).
        recipe: name of the training recipe the paper trains this variant with (``rtmdet``, ``yolov6``,
            ``retinanet``, ``yolov3_asff``); a run without ``recipe.name`` uses it.
    """

    name: str
    family: str
    task: str
    input_size: int
    builder: Callable[..., nn.Module]
    size: str = ""
    recipe: str = "plain"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str, task: str = "bbox", input_size: int = 640, size: str = "",
                   recipe: str = "plain"):
    """Decorator registering ``builder`` under ``name``; duplicate names are rejected."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if task not in ("bbox", "segm"):
            raise ValueError(f"task must be 'bbox' or 'segm', got {task!r}")
        _REGISTRY[name] = ModelEntry(name, family, task, input_size, builder, size, recipe)
        return builder

    return wrap


def _ensure_families_loaded() -> None:
    # Importing the families package registers every variant (side effect, once).
    from . import families  # noqa: F401


def get_model_entry(name: str) -> ModelEntry:
    """Return the registry entry for ``name`` or raise ``KeyError`` listing close names."""
    _ensure_families_loaded()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 80, **overrides) -> nn.Module:
    """Build a registered detector.

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of foreground classes.
        **overrides: keyword arguments of that family's builder (e.g. ``neck_expand_ratio=0.5``,
            ``assigner={"soft_center_alpha": 10.0}``, ``spec="my_spec.yaml"`` for SpineNet).
    """
    return get_model_entry(name).builder(num_classes=num_classes, **overrides)


def list_models(family: str | None = None) -> list[str]:
    """Sorted registered names, optionally of one family."""
    _ensure_families_loaded()
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)
