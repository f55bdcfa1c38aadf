"""The benchmark matrix: artifacts × backends × batch sizes at one input size, with latency and mAP side by side.

Each cell warms up, then times ``iters`` calls on a fixed random batch (wall clock per batch,
host memory in and out) and reports p50/p90/p99 latency and throughput; each (artifact, backend)
is also scored on the val split with :func:`evaluate_runner`, so a row's mAP is that of the exact
artifact and backend it times. A backend that is not installed fails the run with a clear message,
unless ``missing_backend="skip"``: its rows then say ``not installed`` and carry no numbers.

>>> table = run_benchmark([BenchArtifact("train", "runs/ckpt"), BenchArtifact("qat", "out/qat")],
...                       backends=["torch", "onnxruntime"], batch_sizes=[1, 8], input_size=320,
...                       val=split)                                            # doctest: +SKIP
>>> print(table.to_markdown())                                                  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import RuntimeFailure, UserInputError
from ..paths import state_dir
from .backends import BACKENDS, Artifact, Runner, backend_status, load_artifact, make_runner
from .evaluate import evaluate_runner, resolve_input_size

__all__ = ["BenchArtifact", "BenchRow", "BenchTable", "run_benchmark", "time_runner", "latency_stats", "protocol_info"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchArtifact:
    """One thing to benchmark: a checkpoint dir, a quantisation output dir, an ONNX file/dir, or a model.

    ``name`` labels its rows (a workflow uses the step id); ``precision`` overrides the detected one.
    """

    name: str
    path: str | None = None
    model: nn.Module | None = None
    precision: str | None = None


@dataclasses.dataclass
class BenchRow:
    """One cell. Latencies in ms per batch; ``throughput`` in images/s;
    ``status``: ok | not installed | n/a | failed."""

    artifact: str
    backend: str
    precision: str
    batch_size: int
    input_size: str
    status: str = "ok"
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput: float | None = None
    mAP: float | None = None
    mAP50: float | None = None
    segm_mAP: float | None = None  # mask mAP of instance models (RTMDet-Ins); None for detection-only ones
    segm_mAP50: float | None = None
    device: str = ""
    note: str = ""


COLUMNS = [f.name for f in dataclasses.fields(BenchRow)]
_MD_COLUMNS = [("artifact", "artifact"), ("precision", "precision"), ("backend", "backend"), ("batch_size", "batch"),
               ("input_size", "input"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
               ("throughput", "img/s"), ("mAP", "mAP"), ("mAP50", "mAP50"), ("segm_mAP", "segm mAP"),
               ("segm_mAP50", "segm mAP50"), ("status", "status")]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@dataclasses.dataclass
class BenchTable:
    """The benchmark result: ``rows`` (one :class:`BenchRow` per cell) and the ``protocol`` they were measured under."""

    rows: list[BenchRow]
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_markdown(self) -> str:
        head = "| " + " | ".join(h for _, h in _MD_COLUMNS) + " |"
        sep = "|" + "|".join("---" for _ in _MD_COLUMNS) + "|"
        lines = [head, sep]
        for row in self.rows:
            lines.append("| " + " | ".join(_fmt(getattr(row, k)) for k, _ in _MD_COLUMNS) + " |")
        proto = self.protocol
        lines.append("")
        lines.append(f"Protocol: NMS {proto.get('nms', '?')}; intra-op threads: {proto.get('threads', '?')}; "
                     f"warm-up {proto.get('warmup', '?')}, {proto.get('iters', '?')} timed iterations per cell; "
                     f"device {proto.get('device', '?')}; versions {proto.get('versions', {})}.")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """CSV text of the rows (written to ``path`` when given)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})
        text = buf.getvalue()
        if path is not None:
            from ..atomic import atomic_write

            atomic_write(Path(path), text)
        return text

    def to_records(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rows]

    def save(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """``benchmark.csv``, ``benchmark.md`` and ``benchmark.json`` (rows + protocol) in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from ..atomic import atomic_write

        self.to_csv(out / "benchmark.csv")
        atomic_write(out / "benchmark.md", self.to_markdown())
        payload = {"rows": self.to_records(), "protocol": self.protocol}
        atomic_write(out / "benchmark.json", json.dumps(payload, indent=2))
        return {k: str(out / f"benchmark.{k}") for k in ("csv", "md", "json")}

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow: ``bench/<artifact>/<backend>/<precision>/b<N>/<field>``."""
        out = {}
        for r in self.rows:
            if r.status != "ok":
                continue
            key = f"bench/{r.artifact}/{r.backend}/{r.precision}/b{r.batch_size}"
            for field in ("p50_ms", "p90_ms", "p99_ms", "throughput", "mAP", "mAP50", "segm_mAP", "segm_mAP50"):
                value = getattr(r, field)
                if value is not None:
                    out[f"{key}/{field}"] = float(value)
        return out

    def find(self, artifact: str, backend: str, batch_size: int) -> BenchRow | None:
        key = (artifact, backend, batch_size)
        return next((r for r in self.rows if (r.artifact, r.backend, r.batch_size) == key), None)


def time_runner(runner: Runner, images: torch.Tensor, *, warmup: int, iters: int) -> np.ndarray:
    """Latency of ``iters`` calls in ms (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        runner(images)
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        runner(images)
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def latency_stats(latencies_ms: np.ndarray, batch_size: int) -> dict[str, float]:
    """p50/p90/p99/mean latency (ms per batch) and throughput (images/s at the mean latency)."""
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    mean = float(np.mean(latencies_ms))
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "throughput": batch_size * 1e3 / mean if mean > 0 else float("nan")}


def protocol_info(*, threads: int, warmup: int, iters: int, backends: Sequence[str], nms: str) -> dict[str, Any]:
    """How the numbers were measured: NMS, threads, iterations, versions, device."""
    from .backends import _device_name
    from ..version import __version__

    versions = {"detflow": __version__, "torch": torch.__version__}
    for module in ("onnxruntime", "onnx", "tensorrt", "torchao"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            continue
    device = _device_name("cpu") + (f"; {_device_name('cuda')}" if torch.cuda.is_available() else "")
    return {"nms": nms, "threads": threads, "warmup": warmup, "iters": iters, "backends": list(backends),
            "input": "fixed random normalised batch; latency = wall clock per batch incl. host<->device copies",
            "versions": versions, "device": device, "cpu_count": os.cpu_count(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _check_backends(backends: Sequence[str], missing_backend: str) -> dict[str, str]:
    if missing_backend not in ("fail", "skip"):
        raise UserInputError(f"benchmark: missing_backend: expected 'fail' or 'skip', got {missing_backend!r}")
    if not backends:
        raise UserInputError(f"benchmark: backends: expected at least one of {', '.join(BACKENDS)}")
    missing = {b: s for b in backends if (s := backend_status(b)) is not None}
    if missing and missing_backend == "fail":
        detail = "; ".join(f"{b}: {s}" for b, s in missing.items())
        raise RuntimeFailure(f"benchmark: backend(s) not available on this node — {detail}. Install them, or set "
                             "missing_backend: skip to record these cells as 'not installed'")
    return missing


def _cell_rows(art: Artifact, backend: str, runner: Runner, batch_sizes: Sequence[int], size: tuple[int, int],
               warmup: int, iters: int, scores: dict[str, float]) -> list[BenchRow]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for bs in batch_sizes:
        images = torch.randn(bs, 3, *size, generator=gen)
        stats = latency_stats(time_runner(runner, images, warmup=warmup, iters=iters), bs)
        rows.append(BenchRow(art.name, backend, runner.precision, bs, f"{size[0]}x{size[1]}", "ok", **stats,
                             device=runner.device, note=runner.note, **scores))
    return rows


def _empty_rows(art: Artifact, backend: str, batch_sizes: Sequence[int], size: str, status: str,
                note: str) -> list[BenchRow]:
    precision = "fp16" if backend == "tensorrt" and art.precision == "fp32" else art.precision
    return [BenchRow(art.name, backend, precision, bs, size, status, note=note) for bs in batch_sizes]


def run_benchmark(
    artifacts: Sequence[BenchArtifact | Artifact | str],
    *,
    backends: Sequence[str] = ("torch", "onnxruntime"),
    batch_sizes: Sequence[int] = (1,),
    input_size: int | Sequence[int] | None = None,
    val: Any = None,
    warmup: int = 5,
    iters: int = 20,
    missing_backend: Literal["fail", "skip"] = "fail",
    threads: int = 1,
    precisions: Sequence[str] | None = None,
    eval_batch_size: int = 8,
    max_eval_images: int | None = None,
    work_dir: str | os.PathLike | None = None,
) -> BenchTable:
    """Benchmark every artifact on every backend at every batch size (module docstring).

    Args:
        val: a ``DatasetSplit`` to score each (artifact, backend) on; None skips mAP.
        missing_backend: ``"fail"`` raises RuntimeFailure naming the missing backend; ``"skip"`` records
            ``not installed`` rows.
        precisions: keep only cells of these precisions (``fp32``, ``int8``, ``fp16``).
        work_dir: where checkpoints are exported to ONNX for onnxruntime/tensorrt (default $DETFLOW_HOME/bench).
    Raises:
        UserInputError: unknown backend / option. RuntimeFailure: a missing backend with ``missing_backend="fail"``.
    """
    missing = _check_backends(backends, missing_backend)
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UserInputError(f"benchmark: batch_sizes: expected positive integers, got {list(batch_sizes)}")
    work = Path(work_dir) if work_dir else state_dir() / "bench"
    rows: list[BenchRow] = []
    for item in artifacts:
        art = load_artifact(item)
        size = resolve_input_size(art, input_size)
        label = f"{size[0]}x{size[1]}"
        for backend in backends:
            if backend in missing:
                rows += _empty_rows(art, backend, batch_sizes, label, "not installed", missing[backend])
                continue
            if precisions and _empty_rows(art, backend, [1], label, "", "")[0].precision not in precisions:
                continue
            rows += _run_cell(art, backend, size, label, batch_sizes, val=val, warmup=warmup, iters=iters,
                              threads=threads, eval_batch_size=eval_batch_size, max_eval_images=max_eval_images,
                              work=work)
    timed = [r for r in rows if r.status == "ok"]
    in_graph = [r for r in timed if "NMS in graph" in r.note]
    nms = ("included (in the graph)" if timed and len(in_graph) == len(timed) else
           "not included (dense boxes+scores timed; NMS runs outside the timed region)" if not in_graph else
           "mixed: rows noted 'NMS in graph' include it; the others time dense boxes+scores without NMS")
    return BenchTable(rows, protocol_info(threads=threads, warmup=warmup, iters=iters, backends=backends, nms=nms))


def _run_cell(art: Artifact, backend: str, size: tuple[int, int], label: str, batch_sizes: Sequence[int], *, val: Any,
              warmup: int, iters: int, threads: int, eval_batch_size: int, max_eval_images: int | None,
              work: Path) -> list[BenchRow]:
    """Rows of one (artifact, backend): build the runner, score it on ``val``, time every batch size."""
    try:
        runner = make_runner(art, backend, input_size=size, threads=threads,
                             max_batch=max([*batch_sizes, eval_batch_size]), work_dir=work)
    except UserInputError as exc:  # e.g. an ONNX-only artifact on torch
        return _empty_rows(art, backend, batch_sizes, label, "n/a", str(exc))
    if runner.nms_in_graph:
        runner.note = (runner.note + "; NMS in graph").lstrip("; ")
    try:
        scores: dict[str, float] = {}
        if val is not None:
            m = evaluate_runner(runner, art, val, input_size=size, batch_size=eval_batch_size,
                                max_images=max_eval_images)
            scores = {"mAP": float(m["AP"]), "mAP50": float(m["AP50"])}
            if "segm_AP" in m:  # an instance model: its masks are scored too
                scores.update(segm_mAP=float(m["segm_AP"]), segm_mAP50=float(m["segm_AP50"]))
        return _cell_rows(art, backend, runner, batch_sizes, size, warmup, iters, scores)
    except (UserInputError, RuntimeFailure):
        raise
    except Exception as exc:  # a backend crash is reported in its row, never as a number
        log.warning("benchmark cell %s/%s failed: %s: %s", art.name, backend, type(exc).__name__, exc)
        return _empty_rows(art, backend, batch_sizes, label, "failed", f"{type(exc).__name__}: {exc}")
