"""Float32 islands inside mixed-precision training.

Under ``torch.autocast`` (bf16 on CPU/CUDA, fp16 on CUDA) the forward pass runs matmuls and convs
in half precision. Label assignment, IoU and loss reductions must not: bf16 keeps 8 mantissa bits
(a 640 px box coordinate is only known to ±2 px), costs like ``-log(IoU)`` and sums over thousands
of priors lose their small terms, and fp16 overflows past 65504. The usual fix (mmcv's
``force_fp32``) is a float32 region: autocast off and half-precision inputs cast up; the gradient
still flows back into the half-precision activations through the cast.

* :func:`float32_region`: a context manager that turns autocast off on every device type where it
  is on (a no-op outside autocast);
* :func:`to_float32`: casts every bf16/fp16 tensor of a nested structure (tensors, lists, tuples,
  dicts) to float32, leaving everything else (float32/64, integers, masks) untouched;
* :func:`float32_guard`: a decorator doing both for a function's arguments.

Example::

    @float32_guard
    def pairwise_iou(a, b): ...

    with torch.autocast("cpu", dtype=torch.bfloat16):
        pairwise_iou(a.bfloat16(), b)  # computed (and returned) in float32
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

import torch

__all__ = ["float32_region", "float32_guard", "to_float32", "autocast_active", "HALF_DTYPES"]

HALF_DTYPES = (torch.float16, torch.bfloat16)
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")

F = TypeVar("F", bound=Callable[..., Any])


def _enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError, ValueError):  # device type unknown to this torch build
        return False


def autocast_active() -> list[str]:
    """Device types on which autocast is enabled in the current thread (``[]`` outside autocast)."""
    return [d for d in _DEVICE_TYPES if _enabled(d)]


@contextlib.contextmanager
def float32_region() -> Iterator[None]:
    """Disable autocast on every device type where it is enabled, for the ``with`` block."""
    active = autocast_active()
    if not active:
        yield
        return
    with contextlib.ExitStack() as stack:
        for device_type in active:
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def to_float32(obj: Any) -> Any:
    """``obj`` with every bf16/fp16 tensor (also inside lists, tuples and dicts) cast to float32."""
    if torch.is_tensor(obj):
        return obj.float() if obj.dtype in HALF_DTYPES else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_float32(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_float32(v) for v in obj)
    return obj


def float32_guard(fn: F) -> F:
    """Run ``fn`` in a :func:`float32_region` with its half-precision tensor arguments (positional
    and keyword, nested in lists/tuples/dicts) cast to float32. Works on functions and methods."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with float32_region():
            return fn(*to_float32(args), **{k: to_float32(v) for k, v in kwargs.items()})

    wrapper.__float32_guard__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
