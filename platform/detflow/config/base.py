"""Strict pydantic base model, YAML loading with readable errors, and ``--set`` overrides.

Every config class derives from :class:`StrictModel` (frozen, unknown keys forbidden). Errors name
the file, the dotted path of the field, what was expected and what was found::

    train.yaml: train.epochs: expected an integer > 0, got 'ten'
    train.yaml: train.epohcs: unknown key; did you mean 'epochs'?
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError

__all__ = [
    "StrictModel", "load_config", "parse_config", "apply_overrides", "parse_override",
    "format_validation_error", "read_yaml", "config_to_dict", "field_paths", "set_dotted",
]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Frozen, ``extra="forbid"`` base of every detflow config."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` a file (a local path, or a stored location read through a local copy); a
    missing file, a YAML syntax error or a repeated key (``FILE:12: duplicate key 'epochs' (first at
    line 9)``) is a one-line ConfigError."""
    from ..artifact_store import is_uri, materialize
    from ..workflows.lint import DuplicateKeyError, load_unique  # the one loader workflows use too

    path = materialize(path) if is_uri(path) else Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return load_unique(text)
    except DuplicateKeyError as exc:
        raise ConfigError([f"{path}:{exc.line}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}: {where}invalid YAML: {problem}"]) from None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(err: dict) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    simple = {
        "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
        "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
        "bool_type": "true or false", "string_type": "a string", "dict_type": "a mapping",
        "list_type": "a list", "model_type": "a mapping", "model_attributes_type": "a mapping",
        "missing": "a value (required)", "none_required": "null",
    }
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        return f"a number {bounds[kind].format(**ctx)}"
    if kind in ("literal_error", "enum"):
        return f"one of {ctx.get('expected', '?')}"
    if kind in simple:
        return simple[kind]
    return err.get("msg", kind).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _sibling_fields(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid next to the unknown key at ``loc`` (walks nested model types)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = _model_in(field.annotation)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel type inside ``X``, ``X | None``, ``list[X]`` or ``dict[str, X]`` annotations."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_NUMBER_KINDS = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type",
                 "greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _field_at(model_cls: type[BaseModel], loc: tuple) -> Any:
    """The pydantic FieldInfo at ``loc`` (walking nested models), or None."""
    cls: Any = model_cls
    field = None
    for part in loc:
        if isinstance(part, int) or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            return None
        cls = _model_in(field.annotation)
    return field


def _bounds_of(field: Any) -> tuple[str | None, list[str]]:
    """(``"an integer"``/``"a number"``/None, [``"> 0"`` …]) from a field's type and constraints."""
    import typing

    metadata = list(field.metadata)
    base: Any = field.annotation
    for arg in (typing.get_args(base) if typing.get_origin(base) is not typing.Annotated else ()):
        if arg is not type(None):
            base = arg
            break
    if typing.get_origin(base) is typing.Annotated:
        base, *extra = typing.get_args(base)
        metadata.extend(extra)
    noun = {int: "an integer", float: "a number"}.get(base)
    ops = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
    bounds = [f"{sym} {getattr(m, attr)}" for m in metadata for attr, sym in ops if getattr(m, attr, None) is not None]
    return noun, bounds


def _expected_number(err: dict, model_cls: type[BaseModel], loc: tuple) -> str | None:
    """``an integer > 0`` for a constrained numeric field (whatever the error kind), else None."""
    field = _field_at(model_cls, loc) if loc else None
    if field is None:
        return None
    noun, bounds = _bounds_of(field)
    if noun is None or not bounds:
        return None
    return f"{noun} {' and '.join(bounds)}"


def format_validation_error(exc: ValidationError, source: str, model_cls: type[BaseModel], root: str = "") -> list[str]:
    """One line per pydantic error: ``SOURCE: dotted.path: expected …, got …``."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
        path = ".".join([root] * bool(root) + [str(p) for p in loc]) or "(top level)"
        if err["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            close = difflib.get_close_matches(key, _sibling_fields(model_cls, loc), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"{source}: {path}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {path}: missing required value")
        else:
            expected = (_expected_number(err, model_cls, loc) if err["type"] in _NUMBER_KINDS else None) or _expected(err)
            lines.append(f"{source}: {path}: expected {expected}, got {_describe(err.get('input'))}")
    return lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], value parsed as YAML scalar/flow: 3, 0.5, true, [1,2], null)."""
    if "=" not in text or text.startswith("="):
        raise ConfigError([f"--set {text}: expected KEY=VALUE with a dotted key, e.g. train.epochs=10"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a deep copy of ``data`` with each ``a.b=value`` applied (creating mappings as needed)."""
    import copy

    out = copy.deepcopy(data) if data else {}
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(out, keys, value)
    return out


def set_dotted(node: dict, keys: list[str], value: Any) -> None:
    """``node[k0][k1]…[kn] = value``, creating (or replacing non-mapping) intermediate levels."""
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_config(model_cls: type[M], data: Any, source: str = "<config>", overrides: Iterable[str] = ()) -> M:
    """Validate ``data`` (after ``overrides``) as ``model_cls``; raise :class:`ConfigError` with readable lines."""
    overrides = list(overrides)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping, got {_describe(data)}"])
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with --set {' '.join(overrides)})"
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, model_cls)) from None


def load_config(model_cls: type[M], path: str | Path, overrides: Iterable[str] = ()) -> M:
    """Read YAML ``path`` with ``yaml.safe_load`` and validate it as ``model_cls``.

    Relative paths inside the config are left as written; callers resolve them against the
    config file's directory with :func:`resolve_path` where that matters.
    """
    return parse_config(model_cls, read_yaml(path), str(path), overrides)


def config_to_dict(cfg: BaseModel) -> dict:
    """JSON-compatible dict of a config (for MLflow params, artifacts and cache keys)."""
    return cfg.model_dump(mode="json")


def field_paths(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted leaf path of a config class (used to validate sweep search spaces)."""
    paths = []
    for name, field in model_cls.model_fields.items():
        sub = _model_in(field.annotation)
        dotted = f"{prefix}{name}"
        if sub is not None and not _is_container(field.annotation):
            paths.extend(field_paths(sub, dotted + "."))
        else:
            paths.append(dotted)
    return paths


def _is_container(annotation: Any) -> bool:
    import typing

    origin = typing.get_origin(annotation)
    if origin in (list, dict, tuple):
        return True
    return any(_is_container(a) for a in typing.get_args(annotation) if a is not type(None))
