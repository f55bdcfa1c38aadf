"""Retry policy of a workflow step: which failures are retried, how many times, and after how long.

A step's YAML sets it (:class:`~detflow.workflows.schema.Step`)::

    - id: train
      uses: train
      retries: 3               # at most 3 retries (4 attempts), counted across resumes
      retry_delay_s: 10        # first retry after ~10 s, then ~20, ~40, … (exponential backoff)
      retry_max_delay_s: 300   # never wait longer than this
      retry_jitter: 0.5        # ±50 % random jitter on every delay (0: none)
      retry_errors: [infra]    # only Ray infrastructure failures (default: [any])

**Delay** before retrying after failed attempt ``n`` (1-based):
``min(retry_max_delay_s, retry_delay_s · 2**(n-1) · U(1 - retry_jitter, 1 + retry_jitter))`` — the
jitter is *relative* (±50 % by default), and the cap holds after it.

**Filter** (``retry_errors``): a failure is retried when one of the entries matches it. An entry is

* ``any`` — every failure (the default);
* a shorthand — ``oom`` (Ray's memory monitor killed the task, ``MemoryError``, CUDA out of memory),
  ``worker_crash`` (the task's worker process died), ``node_lost`` (its node died or was lost),
  ``infra`` (all three, plus Ray system errors);
* an exception class name — ``WorkerCrashedError``, ``RayTaskError`` (any exception the step raised),
  ``TimeoutError``, or a dotted ``module.Class`` — matched against the classes of the error and of
  the exception inside it (a step's Python exception arrives wrapped in a ``RayTaskError``), subclasses
  included (``OSError`` matches ``FileNotFoundError``).

Whatever ``retry_errors`` says, bad input — :class:`~detflow.errors.UserInputError`, hence
:class:`~detflow.errors.ConfigError` and :class:`~detflow.errors.DataError` — is never retried: running
the step again would fail the same way.

**Attempts** are those stored in the run's state (``step_runs.attempts``), so a resumed run goes on
counting: a step with ``retries: 1`` that already failed twice runs once more on ``resume`` (the resume
asks for it) and is not retried after that.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import UserInputError

__all__ = ["RetryPolicy", "SHORTHANDS", "NEVER_RETRIED", "DEFAULT_MAX_DELAY_S", "DEFAULT_JITTER"]

DEFAULT_MAX_DELAY_S = 300.0
DEFAULT_JITTER = 0.5
ANY = "any"
# shorthand -> exception class names (any module; torch.cuda's and Ray's OutOfMemoryError alike)
SHORTHANDS: dict[str, frozenset[str]] = {
    "oom": frozenset({"OutOfMemoryError", "MemoryError", "ObjectStoreFullError"}),
    "worker_crash": frozenset({"WorkerCrashedError", "LocalRayletDiedError", "ActorDiedError"}),
    "node_lost": frozenset({"NodeDiedError", "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError"}),
}
SHORTHANDS["infra"] = frozenset().union(*SHORTHANDS.values(), {"RaySystemError"})
NEVER_RETRIED = ("UserInputError", "ConfigError", "DataError")  # and their subclasses


def _classes(exc: BaseException) -> Iterator[type]:
    """The classes of ``exc`` and of the exception it wraps (``RayTaskError.cause``, ``__cause__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield from type(exc).__mro__
        exc = getattr(exc, "cause", None) or exc.__cause__


def _names(exc: BaseException) -> set[str]:
    names: set[str] = set()
    for cls in _classes(exc):
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    # Ray names a step's wrapped exception's class "RayTaskError(ValueError)"; match its base name too
    names.update(n.split("(", 1)[0] for n in list(names) if "(" in n)
    return names


def never_retried(exc: BaseException) -> bool:
    """Bad input (UserInputError, ConfigError, DataError), directly or inside a Ray error."""
    return any(issubclass(cls, UserInputError) for cls in _classes(exc))


@dataclass
class RetryPolicy:
    """``retries`` retries after the first attempt; see the module docstring for delay and filter."""

    retries: int = 0
    delay_s: float = 2.0
    max_delay_s: float = DEFAULT_MAX_DELAY_S
    jitter: float = DEFAULT_JITTER
    errors: tuple[str, ...] = (ANY,)  # the step's retry_errors
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    @classmethod
    def of(cls, step: Any, rng: random.Random | None = None) -> "RetryPolicy":
        """The policy of a :class:`~detflow.workflows.schema.Step`."""
        return cls(retries=step.retries, delay_s=step.retry_delay_s, max_delay_s=step.retry_max_delay_s,
                   jitter=step.retry_jitter, errors=tuple(step.retry_errors),
                   **({"rng": rng} if rng is not None else {}))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after failed attempt ``attempt`` (1-based)."""
        base = min(self.max_delay_s, self.delay_s * 2.0 ** min(max(attempt - 1, 0), 64))
        if self.jitter:
            base *= self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return max(0.0, min(self.max_delay_s, base))

    def matches(self, exc: BaseException) -> bool:
        """Whether ``errors`` covers ``exc`` (ignoring the attempt count and bad input)."""
        wanted: set[str] = set()
        for entry in self.errors:
            if entry == ANY:
                return True
            wanted |= SHORTHANDS.get(entry, {entry})
        return bool(wanted & _names(exc))

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether to run the step again after its attempt number ``attempt`` (1-based, counted across
        resumes) failed with ``exc``."""
        return attempt <= self.retries and not never_retried(exc) and self.matches(exc)
