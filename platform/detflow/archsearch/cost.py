"""The cost objective of a SpineNet search: parameters, MACs and ONNX Runtime latency of a sampled model.

SpineNet §4 reports FLOPs next to AP for every architecture it finds; a multi-objective search
(accuracy and cost) needs a cost per trial. :func:`measure_cost` always measures parameters (M) and
GMACs (:func:`detmodels.count_params`, :func:`detmodels.count_macs`) and, for ``latency_ms``, exports
the model's deploy form to ONNX with detflow's exporter and times it in ONNX Runtime (CPU, one
intra-op thread, batch 1: the same conditions for every trial, so latencies are comparable within a
search run on one machine).

>>> costs = measure_cost(model, 256, "latency_ms", Path("trial/cost"))     # doctest: +SKIP
>>> {metric_name(k): v for k, v in costs.items()}                          # doctest: +SKIP
{'cost/params_M': 1.9, 'cost/gmacs': 0.41, 'cost/latency_ms': 12.3}
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["COSTS", "measure_cost", "onnx_latency_ms", "metric_name"]

COSTS = ("params_M", "gmacs", "latency_ms")
_PREFIX = "cost/"


def metric_name(key: str) -> str:
    """The Tune / MLflow metric name of a cost key: ``latency_ms`` → ``cost/latency_ms``."""
    _check_cost(key)
    return _PREFIX + key


def _check_cost(which: str | None) -> None:
    if which is not None and which not in COSTS:
        raise ValueError(f"cost: expected one of {', '.join(COSTS)} or null, got {which!r}")


def onnx_latency_ms(onnx_path: str | Path, image_size: int, *, warmup: int = 3, runs: int = 15) -> float:
    """Median wall time (ms) of one ``1×3×S×S`` inference in ONNX Runtime (1 intra-op thread, CPU)
    after ``warmup`` untimed runs."""
    from ..export.onnx import ort_session

    sess = ort_session(onnx_path, threads=1)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


def _export(model: nn.Module, image_size: int, workdir: Path) -> Path:
    """The deploy form of a copy of ``model`` (re-parameterised, eval) as ``workdir/model.onnx``, batch 1."""
    import detmodels

    from ..export.onnx import DeployModule, export_graph

    module = DeployModule(detmodels.reparameterize_model(copy.deepcopy(model).cpu().float().eval())).eval()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.onnx"
    example = torch.zeros(1, 3, image_size, image_size)
    export_graph(module, example, path, dynamic_batch=False)
    return path


def measure_cost(model: nn.Module, image_size: int, which: str | None, workdir: Path) -> dict[str, float]:
    """Cost of ``model`` at ``image_size``×``image_size`` input.

    Returns ``{"params_M", "gmacs"}`` always, plus ``"latency_ms"`` when ``which == "latency_ms"``
    (ONNX file written to ``workdir/model.onnx``; see :func:`onnx_latency_ms`).
    Raises ValueError for an unknown ``which``.
    """
    import detmodels

    _check_cost(which)
    out = {"params_M": detmodels.count_params(model) / 1e6,
           "gmacs": detmodels.count_macs(model, image_size) / 1e9}
    if which == "latency_ms":
        latency = onnx_latency_ms(_export(model, image_size, Path(workdir)), image_size)
        out["latency_ms"] = latency if math.isfinite(latency) else float("nan")
    return out
