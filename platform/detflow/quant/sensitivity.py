"""Per-layer quantisation sensitivity for partial PTQ (YOLOv6 ``tools/partial_quantization``).

Plain PTQ of YOLOv6-S loses 6.8 AP (42.4 → 35.6); keeping the few layers that suffer most from
int8 in float recovers nearly all of it (42.1). The layers are ranked here, one at a time, with an
eager fake-quant of the re-parameterised model (no export, no observers):

* the layer's weight: int8, per output channel, symmetric (``scale = max|w| / 127``);
* the layer's input activation: uint8, per tensor, affine over the ``[min, max]`` (0 included) that
  the calibration batches give it — the same granularity as the PT2E quantizer of :mod:`.common`
  (whose histogram observer may clip a range that min/max keeps whole: this ranking is the pessimistic
  side of it, which is what finds layers with outlier-dominated inputs).

Metric: the model's raw head outputs (every tensor of ``forward``'s dict: ``cls``/``box`` levels …,
neck features excluded) with only that layer fake-quantised, against fp32, over all calibration
batches. For each output tensor ``k`` the noise-to-signal ratio ``NSR_k = Σ(y − ŷ)² / Σy²``; the
layer's score is ``SQNR = −10·log10(mean_k NSR_k)`` in dB. A lower SQNR is a more sensitive layer;
layers are ranked most sensitive first.

>>> ranked = layer_sensitivity(model, calib, quantizable_convs(model, floats))   # doctest: +SKIP
>>> ranked[0]
LayerScore(name='backbone.stem.fused', sqnr_db=21.4, nsr=0.0072)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..errors import UserInputError
from .common import split_features

__all__ = ["LayerScore", "quantizable_convs", "fake_quant_weight", "fake_quant_activation", "layer_sensitivity",
           "check_keep_float", "write_sensitivity_report", "SENSITIVITY_FILE", "METRIC"]

log = logging.getLogger(__name__)

SENSITIVITY_FILE = "sensitivity.json"
METRIC = ("sqnr_db = -10*log10(mean over raw head output tensors k of sum((y_k - yq_k)^2) / sum(y_k^2)), "
          "over all calibration batches, with only this conv fake-quantised (int8 per-channel symmetric "
          "weight, uint8 per-tensor input over its calibrated [min, max]); lower = more sensitive")
_MAX_DB = 300.0  # SQNR reported for a layer whose fake-quant changes nothing (NSR 0)


@dataclasses.dataclass(frozen=True)
class LayerScore:
    """One conv's sensitivity: ``sqnr_db`` (lower = more sensitive) and ``nsr`` (the mean
    noise-to-signal ratio it comes from, see the module docstring)."""

    name: str
    sqnr_db: float
    nsr: float


def quantizable_convs(model: nn.Module, float_modules: Sequence[str]) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model`` (definition order) not inside ``float_modules``."""
    inside = tuple(float_modules)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
            and not any(name == f or name.startswith(f + ".") for f in inside)]


def check_keep_float(keep_float: Any, candidates: Sequence[str], family: str = "") -> int:
    """``keep_float`` as an int in ``[0, len(candidates)]``.

    Raises:
        UserInputError: not an integer, negative, or more than the quantizable convs.
    """
    if isinstance(keep_float, bool) or not isinstance(keep_float, int):
        raise UserInputError(f"quantization keep_float: expected a whole number of layers, got {keep_float!r}")
    if keep_float < 0:
        raise UserInputError(f"quantization keep_float: expected >= 0 layers kept in float, got {keep_float}")
    if keep_float > len(candidates):
        raise UserInputError(f"quantization keep_float: {keep_float} is more than the {len(candidates)} "
                             f"quantizable convs of this {family + ' ' if family else ''}model")
    return keep_float


def fake_quant_weight(w: Tensor) -> Tensor:
    """``w`` (``O×I×kh×kw``) through int8 per-output-channel symmetric quantisation (values in [-127, 127])."""
    amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (w.dim() - 1)))
    scale = amax / 127.0
    return (w / scale).round().clamp(-127, 127) * scale


def fake_quant_activation(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x`` through uint8 per-tensor affine quantisation over ``[min(lo, 0), max(hi, 0)]``."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


def _head_tensors(outputs: Any) -> list[Tensor]:
    """The raw head output tensors of ``forward``'s dict (sorted keys, levels in order), features left out."""
    raw, _ = split_features(outputs)
    items = sorted(raw.items()) if isinstance(raw, dict) else [("out", raw)]
    flat: list[Tensor] = []
    for _, value in items:
        flat += [t for t in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(t, Tensor)]
    return flat


@torch.no_grad()
def _calibrate(model: nn.Module, convs: dict[str, nn.Conv2d],
               calib: Sequence[Tensor]) -> tuple[dict[str, list[float]], list[list[Tensor]]]:
    """Each conv's input ``[min, max]`` over ``calib`` and the fp32 head outputs per batch."""
    ranges: dict[str, list[float]] = {}

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            lo, hi = float(x.min()), float(x.max())
            old = ranges.setdefault(name, [lo, hi])
            old[0], old[1] = min(old[0], lo), max(old[1], hi)
        return hook

    handles = [conv.register_forward_pre_hook(record(name)) for name, conv in convs.items()]
    try:
        reference = [_head_tensors(model(x)) for x in calib]
    finally:
        for h in handles:
            h.remove()
    return ranges, reference


@contextlib.contextmanager
def _only_quantized(conv: nn.Conv2d, lo: float, hi: float) -> Iterator[None]:
    """``conv`` with a fake-quantised weight and input for the duration of the block."""
    original = conv.weight.data
    conv.weight.data = fake_quant_weight(original)
    handle = conv.register_forward_pre_hook(lambda _m, args: (fake_quant_activation(args[0], lo, hi), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
        conv.weight.data = original


def _nsr(reference: list[list[Tensor]], got: list[list[Tensor]]) -> float:
    """Mean over output tensors of Σ(y − ŷ)² / Σy², each sum taken over all batches."""
    signal = [sum(float(r[k].double().pow(2).sum()) for r in reference) for k in range(len(reference[0]))]
    noise = [sum(float((r[k].double() - g[k].double()).pow(2).sum()) for r, g in zip(reference, got))
             for k in range(len(reference[0]))]
    return sum(n / max(s, 1e-30) for n, s in zip(noise, signal)) / len(signal)


def _sqnr_db(nsr: float) -> float:
    return _MAX_DB if nsr <= 0 else min(-10.0 * math.log10(nsr), _MAX_DB)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    """``step(name)`` per layer: a rich bar on a terminal's stderr, else a log line every ~10 %."""
    if not sys.stderr.isatty():
        done = [0]
        every = max(total // 10, 1)

        def step(name: str) -> None:
            done[0] += 1
            if done[0] % every == 0 or done[0] == total:
                log.info("PTQ sensitivity: %d/%d layers (last %s)", done[0], total, name)
        yield step
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("PTQ sensitivity"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[layer]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("sensitivity", total=total, layer="")

        def step(name: str) -> None:
            bar.update(task, advance=1, layer=name)
        yield step


@torch.no_grad()
def layer_sensitivity(model: nn.Module, calib: Sequence[Tensor], candidates: Sequence[str]) -> list[LayerScore]:
    """Rank ``candidates`` (conv names of the re-parameterised, eval-mode ``model``), most sensitive
    first, by the SQNR of the raw head outputs with only that conv fake-quantised (module docstring).
    Costs ``1 + len(candidates)`` passes over ``calib`` (images ``N×3×H×W`` each)."""
    modules = dict(model.named_modules())
    convs = {name: modules[name] for name in candidates}
    ranges, reference = _calibrate(model, convs, calib)
    scores = []
    with _progress(len(convs)) as step:
        for name, conv in convs.items():
            if name not in ranges:  # a conv the forward never runs: quantising it changes nothing
                scores.append(LayerScore(name, _MAX_DB, 0.0))
                step(name)
                continue
            with _only_quantized(conv, *ranges[name]):
                got = [_head_tensors(model(x)) for x in calib]
            nsr = _nsr(reference, got)
            scores.append(LayerScore(name, _sqnr_db(nsr), nsr))
            step(name)
    return sorted(scores, key=lambda s: -s.nsr)


def write_sensitivity_report(path: Path, ranked: Sequence[LayerScore], kept: Sequence[str],
                             calib_batches: int) -> dict[str, Any]:
    """``sensitivity.json``: the metric, the ranking (rank, name, sqnr_db, nsr) and the convs kept in float."""
    report = {"metric": METRIC, "calib_batches": calib_batches, "keep_float": len(kept), "kept_float": list(kept),
              "layers": [{"rank": i + 1, "name": s.name, "sqnr_db": round(s.sqnr_db, 4), "nsr": s.nsr}
                         for i, s in enumerate(ranked)]}
    atomic_write(path, json.dumps(report, indent=2))
    return report
