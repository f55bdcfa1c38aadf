"""Loading officially released checkpoints into detmodels models.

Each family registers a converter for its reference implementation's key names; files are read
with ``torch.load(weights_only=True)`` (or a restricted unpickler for YOLOv6's pickled modules).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

__all__ = ["load_official_weights", "register_weight_source", "WeightsError"]


class WeightsError(ValueError):
    """A checkpoint that cannot be mapped onto the model (message lists the offending keys)."""


_SOURCES: dict[str, Callable[[nn.Module, Path], nn.Module]] = {}


def register_weight_source(name: str):
    """Register ``loader(model, path) -> model`` for ``source=name``."""

    def wrap(fn):
        if name in _SOURCES:
            raise ValueError(f"weight source {name!r} already registered")
        _SOURCES[name] = fn
        return fn

    return wrap


# The converters: each module registers its source when imported.
_SOURCE_MODULES = ("rtmdet_weights", "yolov6_weights", "yolov3_asff_weights")


def _ensure_sources_loaded() -> None:
    import importlib

    for module in _SOURCE_MODULES:
        importlib.import_module(f"{__package__}.families.{module}")


def load_official_weights(model: nn.Module, path: str | Path, source: str = "mmdet") -> nn.Module:
    """Load a reference implementation's checkpoint into ``model`` strictly (every tensor used,
    shapes checked). ``source`` is ``mmdet``, ``yolov6`` or ``asff``. Returns ``model``."""
    _ensure_sources_loaded()
    if source not in _SOURCES:
        raise WeightsError(f"unknown weight source {source!r}; expected one of {sorted(_SOURCES)}")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    return _SOURCES[source](model, path)
