"""Step-kind registry: each ``uses:`` value maps to a typed parameter class and a run function.

The built-in kinds (``synth``, ``train``, ``distill``, ``qat``, ``ptq``, ``export``, ``benchmark``,
``evaluate``, ``sweep``, ``nas``) are one table of imported objects,
:data:`detflow.workflows.builtin.BUILTIN_KINDS`, registered when :mod:`detflow.workflows` is
imported. This module imports neither the schema nor the steps (so the schema can import it). Tests
register fake kinds with :func:`register_step_kind`.

A parameter field that names an upstream step carries a :class:`Ref` marker in its ``Annotated``
metadata, saying which outputs the referenced step must produce::

    teacher: Annotated[str, Ref("checkpoint")]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

__all__ = ["Ref", "StepKind", "register_step_kind", "get_step_kind", "step_kinds", "ref_fields"]


@dataclass(frozen=True)
class Ref:
    """Marks a parameter whose (string) value is an upstream step id; ``produces`` lists the
    outputs accepted (any one of them), e.g. ``Ref("checkpoint", "onnx")``."""

    produces: tuple[str, ...]

    def __init__(self, *produces: str):
        object.__setattr__(self, "produces", tuple(produces))


@dataclass(frozen=True)
class StepKind:
    """One ``uses:`` kind.

    ``run``: ``fn(params, ctx) -> outputs dict`` (a step module imports its heavy dependencies
    inside the function, so that the table stays cheap to import).
    ``produces``: output names other steps may reference (``checkpoint``, ``onnx``, ``dataset`` …).
    ``resources``: default Ray resources of the step task (a train step's task needs no CPU: its
    Ray Train workers reserve their own). ``registers_model``: the step's model goes to the registry.
    ``needs_data`` / ``needs_model``: the step needs a dataset / model from ``with`` or ``defaults``.
    """

    name: str
    params: type[BaseModel]
    run: Callable[..., dict]
    produces: frozenset[str] = frozenset()
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1.0})
    registers_model: bool = False
    needs_data: bool = False
    needs_model: bool = False

    def __post_init__(self) -> None:
        if not callable(self.run):
            raise TypeError(f"step kind {self.name!r}: run must be a function, got {self.run!r}")


_KINDS: dict[str, StepKind] = {}


def register_step_kind(kind: StepKind, *, replace: bool = False) -> StepKind:
    """Add a kind; a duplicate name raises unless ``replace`` (tests swap fakes in)."""
    if kind.name in _KINDS and not replace:
        raise ValueError(f"step kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get_step_kind(name: str) -> StepKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown step kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def step_kinds() -> dict[str, StepKind]:
    return dict(_KINDS)


def ref_fields(params_cls: type[BaseModel]) -> dict[str, Ref]:
    """``{field name: Ref}`` for the parameter fields that name upstream steps."""
    out = {}
    for name, info in params_cls.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, Ref):
                out[name] = meta
    return out


def ref_values(params: BaseModel | dict[str, Any], params_cls: type[BaseModel]) -> list[tuple[str, str, Ref]]:
    """``[(field, step id, Ref)]`` for every step named by ``params`` (a list field gives several;
    a non-string value such as an inline dataset mapping is not a reference)."""
    data = params if isinstance(params, dict) else {k: getattr(params, k) for k in type(params).model_fields}
    found = []
    for name, ref in ref_fields(params_cls).items():
        value = data.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        found.extend((name, v, ref) for v in values if isinstance(v, str))
    return found
