"""Registry of config kinds: which config class a YAML file is, detected from its top-level keys.

``detflow config validate FILE`` (and any command that accepts "some config") uses it. Areas
register their kinds when their config module is imported::

    from detflow.config.kinds import register_config_kind
    register_config_kind("workflow", WorkflowSpec, lambda d: "steps" in d, priority=10)

Higher ``priority`` is tried first; the train kind (top-level ``model`` and ``data``) has 0.
The modules in ``_PROVIDERS`` (workflows, tune, nas; more via :func:`add_config_provider`) are
imported before the first lookup so that their kinds are known.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from ..errors import ConfigError
from .base import parse_config, read_yaml
from .train import TrainConfig

__all__ = ["ConfigKind", "register_config_kind", "list_config_kinds", "get_config_kind",
           "detect_config_kind", "load_any_config", "add_config_provider"]


@dataclasses.dataclass(frozen=True)
class ConfigKind:
    """A named config class and the predicate recognising its raw YAML mapping."""

    name: str
    cls: type[BaseModel]
    detect: Callable[[dict], bool]
    priority: int = 0
    load: Callable[[Path, list[str]], BaseModel] | None = None  # custom loader (e.g. resolves `base:`)


_KINDS: dict[str, ConfigKind] = {}
# Modules that register kinds when imported; imported lazily the first time kinds are looked up.
_PROVIDERS: list[str] = ["detflow.workflows", "detflow.tune", "detflow.nas"]
_LOADED: set[str] = set()


def add_config_provider(module: str) -> None:
    """Name a module whose import registers config kinds (imported before the next lookup)."""
    if module not in _PROVIDERS:
        _PROVIDERS.append(module)


def _load_providers() -> None:
    import importlib

    for module in _PROVIDERS:
        if module in _LOADED:
            continue
        _LOADED.add(module)
        try:
            importlib.import_module(module)
        except ImportError as exc:  # area not built (yet): silent; a broken import inside it: warn
            missing_itself = exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))
            if not missing_itself:
                import warnings

                warnings.warn(f"config kinds from {module} unavailable: {exc}", stacklevel=2)


def register_config_kind(name: str, cls: type[BaseModel], detect: Callable[[dict], bool], *,
                         priority: int = 0,
                         load: Callable[[Path, list[str]], BaseModel] | None = None) -> ConfigKind:
    """Register ``cls`` as config kind ``name``; ``detect(raw_mapping) -> bool`` recognises it.

    ``load(path, overrides) -> config`` replaces the default ``parse_config(cls, yaml, path,
    overrides)`` for kinds that need more (e.g. merging a ``base:`` file); it raises ConfigError.

    Registering the same name with the same class again is a no-op (module re-imports); with a
    different class it is an error.
    """
    old = _KINDS.get(name)
    if old is not None and old.cls is not cls:
        raise ValueError(f"config kind {name!r} is already registered for {old.cls.__name__}")
    kind = ConfigKind(name, cls, detect, priority, load)
    _KINDS[name] = kind
    return kind


def list_config_kinds() -> list[str]:
    """Registered kind names, in detection order."""
    _load_providers()
    return [k.name for k in sorted(_KINDS.values(), key=lambda k: -k.priority)]


def get_config_kind(name: str) -> ConfigKind:
    _load_providers()
    if name not in _KINDS:
        raise ConfigError([f"--kind {name}: expected one of {list_config_kinds()}"])
    return _KINDS[name]


def detect_config_kind(data: Any, source: str = "<config>") -> ConfigKind:
    """The first kind (by priority) whose ``detect`` accepts ``data``; ConfigError if none does."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping, got {type(data).__name__}"])
    for name in list_config_kinds():
        kind = _KINDS[name]
        try:
            if kind.detect(data):
                return kind
        except Exception:  # a detector must not crash detection of other kinds
            continue
    keys = ", ".join(sorted(map(str, data))) or "none"
    raise ConfigError([f"{source}: (top level): expected a config of kind {' | '.join(list_config_kinds())} "
                       f"(a train config has top-level 'model' and 'data'), got keys: {keys}"])


def load_any_config(path: str | Path, overrides: Iterable[str] = (), kind: str | None = None) -> tuple[ConfigKind, BaseModel]:
    """Read YAML ``path``, detect (or take) its kind and validate it with ``overrides`` applied.

    Detection looks at the mapping after overrides; ``kind`` (a registered name) skips detection.
    """
    from .base import apply_overrides

    overrides = list(overrides)
    data = read_yaml(path)
    data = {} if data is None else data
    chosen = get_config_kind(kind) if kind else detect_config_kind(
        apply_overrides(data, overrides) if isinstance(data, dict) else data, str(path))
    if chosen.load is not None:
        return chosen, chosen.load(Path(path), overrides)
    return chosen, parse_config(chosen.cls, data, str(path), overrides)


register_config_kind("train", TrainConfig, lambda d: "model" in d and "data" in d)
