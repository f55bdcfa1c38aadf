"""Model registry: one registered builder per variant name (timm/torchvision style).

``create_model(name, num_classes=80, *, options=None, **sections)`` is the single entry point. A
variant is registered with :func:`register_model` together with its family's options type and its
own default options; registering a name twice is an error.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from torch import nn

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_model_entry", "variant_options"]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of a variant without building it.

    Attributes:
        name: registered name, e.g. ``rtmdet_tiny``.
        family: ``rtmdet``, ``yolov6``, ``spinenet`` or ``yolov3_asff``.
        task: ``bbox`` (detection) or ``segm`` (instance segmentation).
        input_size: the paper's default square input size (pixels).
        builder: ``builder(num_classes=..., *, options=<options type>) -> nn.Module`` (the
            ``spinenet`` entry also takes ``spec=``).
        size: the variant's size key in its family's table (``tiny``, ``s``, ``n6``, ``49``, ``asff``…).
        recipe: name of the training recipe the paper trains this variant with (``rtmdet``, ``yolov6``,
            ``retinanet``, ``yolov3_asff``); a run without ``recipe.name`` uses it.
        options: the family's options dataclass (e.g. ``YOLOv6Options``); ``None`` for a builder
            that takes no options.
        default_options: this variant's defaults, an ``options`` instance (e.g. YOLOv6-N6 has
            ``atss_warmup_epochs=4``).
    """

    name: str
    family: str
    task: str
    input_size: int
    builder: Callable[..., nn.Module]
    size: str = ""
    recipe: str = "plain"
    options: type | None = None
    default_options: Any = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str, task: str = "bbox", input_size: int = 640, size: str = "",
                   recipe: str = "plain", options: type | None = None, default_options: Any = None):
    """Decorator registering ``builder`` under ``name``; duplicate names are rejected.

    ``options`` is the family's options type; ``default_options`` this variant's defaults
    (default: ``options()``).
    """
    if options is not None and default_options is None:
        default_options = options()
    if options is not None and not isinstance(default_options, options):
        raise TypeError(f"{name}: default_options must be a {options.__name__}, got {type(default_options).__name__}")

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if task not in ("bbox", "segm"):
            raise ValueError(f"task must be 'bbox' or 'segm', got {task!r}")
        _REGISTRY[name] = ModelEntry(name, family, task, input_size, builder, size, recipe, options,
                                     default_options)
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


def create_model(name: str, num_classes: int = 80, *, options: Any = None, **sections: Any) -> nn.Module:
    """Build a registered detector.

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of foreground classes.
        options: a full options instance of the family (default: the variant's
            ``ModelEntry.default_options``).
        **sections: typed section objects (or scalar options) replacing fields of ``options``
            with ``dataclasses.replace``, e.g. ``neck=RTMDetNeckOptions(expand_ratio=0.75)``; the
            ``spinenet`` entry also takes ``spec=`` (a YAML path, its mapping or a ``SpineNetSpec``).
            Dicts are refused (``TypeError``): build the options types, or use
            :func:`detmodels.options_from_dict` for YAML-style mappings.

    >>> from detmodels import TALOptions
    >>> m = create_model("yolov6_n", num_classes=3, assigner=TALOptions(tal_topk=9))
    >>> m.criterion.tal.topk
    9
    """
    entry = get_model_entry(name)
    if entry.options is None:
        if options is not None:
            raise TypeError(f"{name}: takes no options")
        return entry.builder(num_classes=num_classes, **sections)
    base = entry.default_options if options is None else options
    if not isinstance(base, entry.options):
        raise TypeError(f"{name}: options must be a {entry.options.__name__}, got {type(base).__name__}")
    extra = {k: sections.pop(k) for k in list(sections) if k in _builder_keywords(entry)}
    from .options import merge_options

    return entry.builder(num_classes=num_classes, options=merge_options(base, sections, name), **extra)


def _builder_keywords(entry: ModelEntry) -> set[str]:
    """Keywords of a builder besides ``num_classes`` and ``options`` (``spec`` for ``spinenet``)."""
    params = inspect.signature(entry.builder).parameters
    return {p for p in params if p not in ("num_classes", "options")}


def variant_options(name: str, overrides: Any = None, where: str = "model") -> Any:
    """``name``'s default options with YAML-style ``overrides`` (a nested mapping) applied strictly.

    >>> variant_options("yolov6_n6", {"assigner": {"tal_topk": 9}}).atss_warmup_epochs  # P6 default kept
    4
    """
    entry = get_model_entry(name)
    if entry.options is None:
        raise TypeError(f"{name}: takes no options")
    from .options import options_from_dict

    return options_from_dict(entry.options, overrides, where, base=entry.default_options, family=entry.family)


def list_models(family: str | None = None) -> list[str]:
    """Sorted registered names, optionally of one family."""
    _ensure_families_loaded()
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)
