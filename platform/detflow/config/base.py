"""Strict pydantic base model, YAML loading (repeated keys refused) and readable errors.

Layering configs (``--set``, workflow steps, trials) is :mod:`detflow.config.compose`.

Every config class derives from :class:`StrictModel` (frozen, unknown keys forbidden). Errors name
the file, the dotted path of the field, what was expected and what was found::

    train.yaml: train.epochs: expected an integer > 0, got 'ten'
    train.yaml: train.epohcs: unknown key; did you mean 'epochs'?
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..errors import ConfigError

__all__ = [
    "StrictModel", "parse_override", "format_validation_error", "format_error_line",
    "read_yaml", "describe_value", "load_unique", "UniqueKeyLoader", "DuplicateKeyError", "reject_duplicate_keys",
    "config_to_dict", "field_paths", "set_dotted", "field_error",
]


class StrictModel(BaseModel):
    """Frozen, ``extra="forbid"`` base of every detflow config."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that repeats a key: ``problem`` is ``duplicate key 'epochs' (first at line 9)``,
    ``problem_mark`` the repeat; ``line`` and ``first`` are the two 1-based lines."""

    def __init__(self, key: Any, line: int, first: int, mark: Any):
        super().__init__(None, None, f"duplicate key {key!r} (first at line {first})", mark)
        self.key, self.line, self.first = key, line, first


def reject_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    """Raise :class:`DuplicateKeyError` when ``node`` repeats a key of its own (keys merged in with
    ``<<`` may be overridden, as YAML allows). Call before ``flatten_mapping``."""
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise DuplicateKeyError(key, line, seen[key], key_node.start_mark)
            seen[key] = line
        except TypeError:  # an unhashable key: the constructor reports it
            continue


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (PyYAML silently keeps the last):
    what workflow files and config files (``detflow.config.base.read_yaml``) are read with."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    reject_duplicate_keys(loader, node)
    yield from loader.construct_yaml_map(node)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_unique(text: str, loader: type | None = None) -> Any:
    """``yaml.safe_load`` through a SafeLoader subclass (default :class:`UniqueKeyLoader`): a repeated
    key raises :class:`DuplicateKeyError`."""
    instance = (loader or UniqueKeyLoader)(text)
    try:
        return instance.get_single_data()
    finally:
        instance.dispose()


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` a file (a local path, or a stored location read through a local copy); a
    missing file, a YAML syntax error or a repeated key (``FILE:12: duplicate key 'epochs' (first at
    line 9)``) is a one-line ConfigError."""
    from ..artifact_store import is_uri, materialize

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


def describe_value(value: Any) -> str:
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


def _is_model(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _union_members(annotation: Any) -> dict[Any, type[BaseModel]]:
    """``{tag: model}`` for the BaseModel members of a (discriminated) union annotation; a member's
    tags are its ``Tag`` metadata, the values of its ``Literal`` fields and its class name."""
    import typing

    members: dict[Any, type[BaseModel]] = {}
    for arg in typing.get_args(annotation):
        tags: list[Any] = []
        if typing.get_origin(arg) is typing.Annotated:
            arg, *meta = typing.get_args(arg)
            tags += [m.tag for m in meta if hasattr(m, "tag")]
        if not _is_model(arg):
            members.update(_union_members(arg))
            continue
        for field in arg.model_fields.values():
            if typing.get_origin(field.annotation) is typing.Literal:
                tags += list(typing.get_args(field.annotation))
        for tag in [*tags, arg.__name__]:
            members.setdefault(tag, arg)
    return members if len(set(members.values())) > 1 else {}


def _walk(model_cls: type[BaseModel], loc: tuple) -> tuple[list, Any, Any]:
    """(the displayed path, the model class holding the last part, its FieldInfo or None) of a
    pydantic error location: validator names and union tags (``model.yolov6.assigner`` →
    ``model.assigner``, the tag choosing the member class) are dropped from the path."""
    shown: list = []
    cls: Any = model_cls
    parent: Any = None
    field: Any = None
    members: dict = {}
    for part in loc:
        if isinstance(part, str) and (part.startswith("function-") or "[" in part):
            continue
        if members and not isinstance(part, int) and part in members and not (_is_model(cls) and part in cls.model_fields):
            cls, members = members[part], {}
            continue
        shown.append(part)
        if isinstance(part, int):
            continue
        parent = cls
        field = cls.model_fields.get(part) if _is_model(cls) else None
        members = _union_members(field.annotation) if field is not None else {}
        cls = _model_in(field.annotation) if field is not None else None
    return shown, parent, field


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


def _expected_number(field: Any) -> str | None:
    """``an integer > 0`` for a constrained numeric field (whatever the error kind), else None."""
    if field is None:
        return None
    noun, bounds = _bounds_of(field)
    if noun is None or not bounds:
        return None
    return f"{noun} {' and '.join(bounds)}"


def format_error_line(err: dict, source: str, model_cls: type[BaseModel], root: str = "") -> str:
    """One pydantic error as ``SOURCE: dotted.path: expected …, got …`` (an unknown key gets a
    did-you-mean, or the keys valid in its section)."""
    shown, parent, field = _walk(model_cls, tuple(err["loc"]))
    path = ".".join([root] * bool(root) + [str(p) for p in shown]) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(shown[-1]) if shown else "?"
        valid = list(parent.model_fields) if _is_model(parent) else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; expected one of: {', '.join(valid)}" if valid else "")
        return f"{source}: {path}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{source}: {path}: missing required value"
    expected = (_expected_number(field) if err["type"] in _NUMBER_KINDS else None) or _expected(err)
    return f"{source}: {path}: expected {expected}, got {describe_value(err.get('input'))}"


def field_error(title: str, loc: tuple, value: Any, expected: str) -> ValidationError:
    """The error a model validator raises to refuse the field at ``loc`` (relative to the model):
    it reads ``SOURCE: loc: expected EXPECTED, got VALUE``, not a top-level error with the whole config."""
    err = PydanticCustomError("option_value", "{expected}", {"expected": expected})
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=err, loc=loc, input=value)])


def format_validation_error(exc: ValidationError, source: str, model_cls: type[BaseModel], root: str = "") -> list[str]:
    """One line per pydantic error: ``SOURCE: dotted.path: expected …, got …``."""
    return [format_error_line(err, source, model_cls, root) for err in exc.errors()]


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


def set_dotted(node: dict, keys: list[str], value: Any) -> None:
    """``node[k0][k1]…[kn] = value``, creating (or replacing non-mapping) intermediate levels."""
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


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
