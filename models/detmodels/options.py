"""Typed model options: the one place a family's knobs, their defaults and their rules live.

Every family declares its options as frozen, keyword-only dataclasses next to its variant table
(``RTMDetOptions``, ``YOLOv6Options``, ``SpineNetOptions``, ``YOLOv3ASFFOptions``). A field carries
its rule (``topk: int = option(13, integer(1))``, a :class:`Rule`); a value is checked once, in
:class:`Options`' ``__post_init__``, which raises an :class:`OptionError` naming the field and the
value. This module is a leaf (standard library only)::

    >>> from detmodels import YOLOv3ASFFOptions
    >>> options_from_dict(YOLOv3ASFFOptions, {"head": {"ignore_thr": 0.5}}).head
    YOLOv3ASFFHeadOptions(ignore_thr=0.5, label_smooth=True)
    >>> options_to_dict(YOLOv3ASFFOptions())
    {'neck': {'dropblock': False}, 'head': {'ignore_thr': 0.7, 'label_smooth': True}}
    >>> option_paths(YOLOv3ASFFOptions)
    ['neck.dropblock', 'head.ignore_thr', 'head.label_smooth']
    >>> options_from_dict(YOLOv3ASFFOptions, {"head": {"ignore": 1}})
    Traceback (most recent call last):
    ...
    ValueError: model.head.ignore: unknown option for yolov3_asff; expected one of [ignore_thr, label_smooth]

A bad value raises ``OptionError("model.head.ignore_thr: expected a number in [0, 1], got 2")``.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
import typing
from typing import Any, Callable, Mapping, TypeVar

__all__ = ["OptionError", "check", "is_number", "is_int", "Rule", "FLAG", "number", "integer", "one_of", "optional",
           "option", "Options", "family_options", "options_from_dict", "options_to_dict", "option_paths",
           "section_types", "merge_options"]

T = TypeVar("T")


class OptionError(ValueError):
    """An option value breaking its rule. ``path`` is dotted inside the options (``assigner.topk``)."""

    def __init__(self, path: str, value: Any, expected: str):
        self.path, self.value, self.expected = path, value, expected
        super().__init__(f"{path}: expected {expected}, got {value!r}")

    def within(self, prefix: str) -> "OptionError":
        """The same error one section further out (``prefix.path``)."""
        return OptionError(f"{prefix}.{self.path}" if prefix else self.path, self.value, self.expected)


def check(opts: Any, name: str, ok: bool, expected: str) -> None:
    """Raise :class:`OptionError` for ``opts.name`` unless ``ok`` (call from ``__post_init__``)."""
    if not ok:
        raise OptionError(name, getattr(opts, name), expected)


def is_number(x: object) -> bool:
    """An int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_int(x: object, low: int | None = None) -> bool:
    """An int (not a bool), at least ``low`` when given."""
    return isinstance(x, int) and not isinstance(x, bool) and (low is None or x >= low)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A field's rule: ``ok(value)`` must hold, else an :class:`OptionError` shows ``expected``."""

    ok: Callable[[Any], bool]
    expected: str


FLAG = Rule(lambda x: isinstance(x, bool), "true or false")

_BOUNDS = (("gt", ">", operator.gt), ("ge", ">=", operator.ge), ("lt", "<", operator.lt), ("le", "<=", operator.le))


def number(**bounds: float) -> Rule:
    """A number within ``gt``/``ge``/``lt``/``le`` bounds (``number(gt=0, le=2)``: "a number > 0 and <= 2";
    ``ge`` with ``le``: "a number in [lo, hi]")."""
    tests = [(symbol, op, bounds[key]) for key, symbol, op in _BOUNDS if key in bounds]
    if set(bounds) == {"ge", "le"}:
        text = f"a number in [{bounds['ge']}, {bounds['le']}]"
    else:
        text = "a number " + " and ".join(f"{symbol} {bound}" for symbol, _, bound in tests)
    return Rule(lambda x: is_number(x) and all(op(x, bound) for _, op, bound in tests), text)


def integer(low: int) -> Rule:
    """An integer >= ``low``."""
    return Rule(lambda x: is_int(x, low), f"an integer >= {low}")


def one_of(*values: str) -> Rule:
    """One of ``values``."""
    return Rule(lambda x: x in values, "one of " + ", ".join(repr(v) for v in values))


def optional(rule: Rule) -> Rule:
    """``None`` (YAML ``null``) or a value keeping ``rule``."""
    return Rule(lambda x: x is None or rule.ok(x), f"null or {rule.expected}")


def option(default: Any, rule: Rule) -> Any:
    """A field with ``default`` whose values must keep ``rule``."""
    return dataclasses.field(default=default, metadata={"rule": rule})


class Options:
    """Base of the options dataclasses: ``__post_init__`` checks every field made by :func:`option`
    (in field order); a subclass with a rule across fields extends it."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            if rule is not None:
                check(self, f.name, rule.ok(getattr(self, f.name)), rule.expected)


def family_options(family: str, **sections: type) -> Callable[[type[T]], type[T]]:
    """Class decorator for a family's options: sets ``family``, adds the ``sections`` (field name →
    section options class, defaulting to its defaults) before the class's own fields, and makes the
    class a frozen, keyword-only dataclass."""
    def wrap(cls: type[T]) -> type[T]:
        cls.family = family  # type: ignore[attr-defined]
        cls.__annotations__ = {**sections, **cls.__dict__.get("__annotations__", {})}
        for name, sub in sections.items():
            setattr(cls, name, dataclasses.field(default_factory=sub))
        return dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    return wrap


@functools.lru_cache(maxsize=None)
def section_types(cls: type) -> dict[str, Any]:
    """Resolved field annotations of an options dataclass (``from __future__`` strings evaluated)."""
    return typing.get_type_hints(cls)


def _section_class(annotation: Any) -> type | None:
    """The options dataclass in ``X`` or ``X | None``, else None."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def _family(cls: type) -> str:
    return str(getattr(cls, "family", cls.__name__))


def options_from_dict(cls: type[T], mapping: Mapping[str, Any] | None, where: str = "model", *,
                      base: T | None = None, family: str | None = None) -> T:
    """Options ``cls`` from a YAML-style mapping (strict).

    Keys absent from ``mapping`` keep ``base``'s value (default: the class defaults); nested
    sections are mappings; lists become tuples. Raises ``ValueError``
    ``"model.assigner.soft_center_alpha: unknown option for yolov6; expected one of [...]"`` for an
    unknown key and the dataclass's :class:`OptionError` (with the full dotted path) for a bad value.
    """
    family = family or _family(cls)
    mapping = dict(mapping or {})
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in fields:
            raise ValueError(f"{where}.{key}: unknown option for {family}; expected one of [{', '.join(fields)}]")
    types = section_types(cls)
    values: dict[str, Any] = {}
    for name, value in mapping.items():
        sub = _section_class(types[name])
        current = getattr(base, name) if base is not None else None
        if sub is not None and isinstance(value, Mapping):
            value = options_from_dict(sub, value, f"{where}.{name}", base=current, family=family)
        elif sub is not None and not isinstance(value, sub):
            raise OptionError(f"{where}.{name}", value, f"a mapping of {sub.__name__} fields")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except OptionError as exc:
        raise exc.within(where) from None


def options_to_dict(opts: Any) -> dict[str, Any]:
    """Plain YAML types (dicts, lists, numbers, strings, bools, None) of an options instance."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if dataclasses.is_dataclass(value):
            value = options_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def option_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted leaf paths of an options class (``["neck.expand_ratio", …, "assigner.topk"]``)."""
    paths: list[str] = []
    types = section_types(cls)
    for f in dataclasses.fields(cls):
        sub = _section_class(types[f.name])
        paths.extend(option_paths(sub, f"{prefix}{f.name}.") if sub is not None else [f"{prefix}{f.name}"])
    return paths


def merge_options(base: T, sections: Mapping[str, Any], name: str = "model") -> T:
    """``dataclasses.replace(base, **sections)`` where every value is a typed section object (or a
    scalar option); a dict is refused with a ``TypeError`` naming the options type to use."""
    types = section_types(type(base))
    for key, value in sections.items():
        if key not in types:
            raise TypeError(f"{name}: unknown option section {key!r}; expected one of {sorted(types)}")
        sub = _section_class(types[key])
        if isinstance(value, Mapping):
            want = sub.__name__ if sub is not None else "a value"
            raise TypeError(f"{name}: {key}= takes {want}(...), not a dict; use detmodels.{want} "
                            f"(or options_from_dict for YAML-style mappings)")
        if sub is not None and not isinstance(value, sub):
            raise TypeError(f"{name}: {key}= takes {sub.__name__}, got {type(value).__name__}")
    try:
        return dataclasses.replace(base, **sections)
    except OptionError as exc:
        raise exc.within(name) from None
