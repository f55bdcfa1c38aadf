"""Config kinds: every config file a user writes says what it is on its first line.

``kind: train | workflow | sweep | nas`` is a top-level key of every config file; each config
class has a ``kind: Literal[...]`` field defaulting to its own kind, so configs detflow composes
internally (and the ``config.yaml`` stored next to a checkpoint, old ones included) validate
without it. A *user file* is read through :func:`read_user_config` / :func:`load_user_config`,
which refuse a file without ``kind`` (naming the kind it looks like and the fix) or of another
kind than the command takes::

    cfg.yaml: (top level): missing 'kind'; this looks like a train config (top-level model and data):
    add 'kind: train' as the first line, or run 'detflow config migrate cfg.yaml'

Which class (and loader) each kind has is the table ``detflow.sdk.CONFIG_KINDS`` (it names classes
of the upper layers; this module is at the bottom). The key sniffing of :func:`looks_like` only
produces the hint above, it never decides a kind. :func:`add_kind_line` is the text edit behind
``detflow config migrate``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from pydantic import BaseModel

from ..errors import ConfigError
from .base import read_yaml
from .compose import parse_config

__all__ = ["KIND_NAMES", "COMMANDS", "kind_of", "looks_like", "check_kind", "read_user_config",
           "load_user_config", "add_kind_line", "missing_kind_message"]

M = TypeVar("M", bound=BaseModel)

KIND_NAMES = ("train", "workflow", "sweep", "nas")
# The command that runs a file of each kind (named in the wrong-kind error).
COMMANDS = {"train": "detflow train FILE", "workflow": "detflow run FILE", "sweep": "detflow sweep FILE",
            "nas": "detflow nas FILE"}

# (kind, what gives it away, test on the top-level mapping): used only for the "looks like" hint.
_HINTS: tuple[tuple[str, str, Callable[[dict], bool]], ...] = (
    ("workflow", "top-level steps", lambda d: "steps" in d),
    ("sweep", "top-level base and space", lambda d: "base" in d and "space" in d),
    ("nas", "top-level base and proxy", lambda d: "base" in d and ("proxy" in d or "search" in d)),
    ("train", "top-level model and data", lambda d: "model" in d and "data" in d),
    ("nas", "top-level base", lambda d: "base" in d),
)


def kind_of(cls: type[BaseModel]) -> str:
    """The kind a config class declares (the default of its ``kind`` field)."""
    return cls.model_fields["kind"].default


def looks_like(data: Any) -> tuple[str, str] | None:
    """``(kind, reason)`` a mapping without ``kind`` most resembles, or None."""
    if not isinstance(data, dict):
        return None
    return next(((kind, why) for kind, why, test in _HINTS if test(data)), None)


def missing_kind_message(source: str, data: Any) -> str:
    """The one-line error for a file without ``kind``."""
    guess = looks_like(data)
    name = Path(source).name if source else "FILE"
    if guess is None:
        return (f"{source}: (top level): missing 'kind'; add 'kind: {' | '.join(KIND_NAMES)}' as the first line "
                f"(a train config has top-level model and data, a workflow steps, a sweep base and space)")
    kind, why = guess
    return (f"{source}: (top level): missing 'kind'; this looks like a {kind} config ({why}): add 'kind: {kind}' "
            f"as the first line, or run 'detflow config migrate {name}'")


def check_kind(data: Any, expected: str | Iterable[str], source: str) -> Any:
    """Return ``data`` (a user file's raw mapping) if its ``kind`` is one of ``expected``; else a
    one-line ConfigError: kind missing (with the hint), unknown, or another kind than the command takes."""
    allowed = (expected,) if isinstance(expected, str) else tuple(expected)
    if not isinstance(data, dict):
        return data  # parse_config reports "expected a mapping"
    if "kind" not in data:
        raise ConfigError([missing_kind_message(source, data)])
    kind = data["kind"]
    if kind not in KIND_NAMES:
        raise ConfigError([f"{source}: kind: expected one of {' | '.join(KIND_NAMES)}, got {kind!r}"])
    if kind not in allowed:
        wanted = " or ".join(allowed)
        raise ConfigError([f"{source}: kind: this is a {kind} config, but a {wanted} config is expected here; "
                           f"run it with '{COMMANDS[kind].replace('FILE', str(source))}'"])
    return data


def read_user_config(path: str | Path, expected: str | Iterable[str]) -> dict:
    """``read_yaml(path)`` of a file a user wrote, its ``kind`` checked (see :func:`check_kind`)."""
    data = read_yaml(path)
    return check_kind({} if data is None else data, expected, str(path))


def load_user_config(cls: type[M], path: str | Path, overrides: Iterable[str] = ()) -> M:
    """Read and validate a user's config file as ``cls``, requiring ``kind: <cls's kind>``."""
    return parse_config(cls, read_user_config(path, kind_of(cls)), str(path), overrides)


_KIND_LINE = re.compile(r"^kind[ \t]*:", re.MULTILINE)


def add_kind_line(text: str, kind: str) -> str | None:
    """``text`` with ``kind: KIND`` inserted as a line after its leading comment block (and after a
    ``%YAML``/``---`` header), every other byte kept; None when it already has a top-level ``kind``."""
    if kind not in KIND_NAMES:
        raise ValueError(f"kind: expected one of {' | '.join(KIND_NAMES)}, got {kind!r}")
    if _KIND_LINE.search(text):
        return None
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    at = 0
    while at < len(lines) and _is_header(lines[at]):
        at += 1
    if at and lines[at - 1].strip() == "" and any(ln.lstrip().startswith("#") for ln in lines[:at]):
        at -= 1  # keep a blank line that separates the comment block from the body below the new line
        while at and lines[at - 1].strip() == "":
            at -= 1
    if at and not lines[at - 1].endswith(("\n", "\r")):
        lines[at - 1] += newline
    lines.insert(at, f"kind: {kind}{newline}")
    return "".join(lines)


def _is_header(line: str) -> bool:
    """A line before the body: a comment, a blank line, a YAML directive or the document start."""
    stripped = line.strip()
    return stripped == "" or stripped.startswith(("#", "%")) or stripped == "---"
