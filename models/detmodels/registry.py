"""Model registry: one registered builder per variant name (timm/torchvision style), without torch.

``create_model(name, num_classes=80, *, options=None, **sections)`` is the single entry point. A
variant is registered with :func:`register_model` (a decorator on a builder) or :func:`add_model`
together with its family's options type and its own default options; registering a name twice is an
error. The published variants are listed by :mod:`detmodels.catalog`, whose builders are
:class:`LazyBuilder` paths: looking a variant up (its family, options, defaults) imports no torch,
building it imports its family's model code.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelEntry", "LazyBuilder", "register_model", "add_model", "create_model", "list_models",
           "get_model_entry", "variant_options"]


@dataclasses.dataclass(frozen=True)
class LazyBuilder:
    """A builder named by ``"module:function"``, imported when first called, with keywords bound
    (e.g. ``LazyBuilder("detmodels.families.yolov6:build_yolov6", (("size", "n"),))``)."""

    target: str
    bound: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, target: str, **bound: Any) -> "LazyBuilder":
        """``LazyBuilder.of("pkg.module:function", size="n")``."""
        return cls(target, tuple(bound.items()))

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imports its module)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **dict(self.bound), **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of a variant without building it (and without importing torch).

    Attributes:
        name: registered name, e.g. ``rtmdet_tiny``.
        family: ``rtmdet``, ``yolov6``, ``spinenet`` or ``yolov3_asff``.
        task: ``bbox`` (detection) or ``segm`` (instance segmentation).
        input_size: the paper's default square input size (pixels).
        builder: ``builder(num_classes=..., *, options=<options type>) -> nn.Module``: a function or a
            :class:`LazyBuilder` (the catalog's: its module is imported at build time).
        size: the variant's size key in its family's table (``tiny``, ``s``, ``n6``, ``49``, ``asff``…).
        recipe: name of the training recipe the paper trains this variant with (``rtmdet``, ``yolov6``,
            ``retinanet``, ``yolov3_asff``); a run without ``recipe.name`` uses it.
        options: the family's options dataclass (e.g. ``YOLOv6Options``); ``None`` for a builder
            that takes no options.
        default_options: this variant's defaults, an ``options`` instance (e.g. YOLOv6-N6 has
            ``atss_warmup_epochs=4``).
        takes_spec: the builder also takes ``spec=`` (a SpineNet block spec: the ``spinenet`` entry).
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
    takes_spec: bool = False


_REGISTRY: dict[str, ModelEntry] = {}


def add_model(name: str, builder: Callable[..., nn.Module], *, family: str, task: str = "bbox",
              input_size: int = 640, size: str = "", recipe: str = "plain", options: type | None = None,
              default_options: Any = None, takes_spec: bool = False) -> ModelEntry:
    """Register ``builder`` under ``name`` and return its entry; duplicate names are rejected.

    ``options`` is the family's options type; ``default_options`` this variant's defaults
    (default: ``options()``).
    """
    if options is not None and default_options is None:
        default_options = options()
    if options is not None and not isinstance(default_options, options):
        raise TypeError(f"{name}: default_options must be a {options.__name__}, got {type(default_options).__name__}")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if task not in ("bbox", "segm"):
        raise ValueError(f"task must be 'bbox' or 'segm', got {task!r}")
    entry = ModelEntry(name, family, task, input_size, builder, size, recipe, options, default_options, takes_spec)
    _REGISTRY[name] = entry
    return entry


def register_model(name: str, *, family: str, task: str = "bbox", input_size: int = 640, size: str = "",
                   recipe: str = "plain", options: type | None = None, default_options: Any = None):
    """Decorator registering ``builder`` under ``name`` (see :func:`add_model`); a builder with a
    ``spec`` parameter takes a SpineNet spec (``ModelEntry.takes_spec``)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        add_model(name, builder, family=family, task=task, input_size=input_size, size=size, recipe=recipe,
                  options=options, default_options=default_options,
                  takes_spec="spec" in inspect.signature(builder).parameters)
        return builder

    return wrap


def _ensure_catalog_loaded() -> None:
    # Importing the catalog registers every published variant (side effect, once; no torch).
    importlib.import_module(f"{__package__}.catalog")


def get_model_entry(name: str) -> ModelEntry:
    """Return the registry entry for ``name`` or raise ``KeyError`` listing close names."""
    _ensure_catalog_loaded()
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
    extra = {"spec": sections.pop("spec")} if entry.takes_spec and "spec" in sections else {}
    from .options import merge_options

    return entry.builder(num_classes=num_classes, options=merge_options(base, sections, name), **extra)


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
    _ensure_catalog_loaded()
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)
