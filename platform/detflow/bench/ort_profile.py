"""Op-level ONNX Runtime profile of an fp32 and an int8 graph of one detector (``detflow bench ort-profile``).

Protocol: CPU execution provider, 1 intra-op thread, batch 1, input at the graph's size. Latency: a plain session,
``warmup`` runs then ``iters`` timed runs (median wall ms, mean CPU ms from ``time.process_time``). Profile: a
second session with ``SessionOptions.enable_profiling``, the same warm-up and runs; the Chrome-trace JSON is
parsed, the warm-up runs dropped (node events outside the last ``iters`` ``model_run`` windows), each node's
kernel time taken as its median over the runs, and summed per op type (count, ms per inference, share %).
The nodes are those of the graph ORT actually runs (``optimized_model_filepath``: QDQ fused into QLinearConv,
layout nodes inserted); each is classified int8 / q/dq / float, and each float node of the int8 graph gets
the reason (:mod:`detflow.bench.float_reasons`).

>>> report = profile_pair("exports/model.onnx", "ptq/model.int8.onnx", iters=50)   # doctest: +SKIP
>>> print(report.to_markdown(top=15))                                              # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserInputError
from .float_reasons import (
    INT8_OPS, QDQ_OPS, conv_aliases, conv_reasons, node_reason, quantised_downstream, read_float_modules,
)

__all__ = ["NodeTime", "GraphProfile", "OrtProfile", "resolve_graph", "profile_graph", "profile_pair"]


@dataclasses.dataclass
class NodeTime:
    """One node of the optimised graph: kernel ms per inference, class (int8 | q/dq | float), reason if float."""

    name: str
    op: str
    ms: float
    kind: str
    reason: str = ""


@dataclasses.dataclass
class GraphProfile:
    """Latency and per-node kernel times of one graph; ``ops``: op type → (count, ms per inference)."""

    path: str
    latency_ms: float
    cpu_ms: float
    profiled_ms: float
    nodes: list[NodeTime]
    ops_before: dict[str, int]
    input_shape: tuple[int, ...] = ()

    @property
    def kernel_ms(self) -> float:
        return sum(n.ms for n in self.nodes)

    def ops(self) -> list[tuple[str, int, float, float, str]]:
        """(op, count, ms, share %, kind) per op type, slowest first; shares sum to 100."""
        table: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        for n in self.nodes:
            table[(n.op, n.kind)][0] += 1
            table[(n.op, n.kind)][1] += n.ms
        total = self.kernel_ms or 1.0
        rows = [(op, int(c), ms, 100.0 * ms / total, kind) for (op, kind), (c, ms) in table.items()]
        return sorted(rows, key=lambda r: -r[2])

    def kind_shares(self) -> dict[str, float]:
        """Share % of kernel time per class (int8, q/dq, float)."""
        total = self.kernel_ms or 1.0
        shares: dict[str, float] = defaultdict(float)
        for n in self.nodes:
            shares[n.kind] += 100.0 * n.ms / total
        return dict(shares)

    def to_dict(self, top: int) -> dict[str, Any]:
        return {"path": self.path, "latency_ms": self.latency_ms, "cpu_ms": self.cpu_ms,
                "profiled_ms": self.profiled_ms, "kernel_ms": self.kernel_ms, "kind_shares": self.kind_shares(),
                "ops_exported": self.ops_before,
                "ops": [dict(zip(("op", "count", "ms", "share", "kind"), r)) for r in self.ops()],
                "top_nodes": [dataclasses.asdict(n) for n in sorted(self.nodes, key=lambda n: -n.ms)[:top]],
                "float_nodes": [dataclasses.asdict(n) for n in self.nodes if n.kind == "float"]}


@dataclasses.dataclass
class OrtProfile:
    """Both graphs' profiles, the protocol and ``fp32 latency / int8 latency``."""

    fp32: GraphProfile
    int8: GraphProfile
    iters: int
    warmup: int
    input_shape: tuple[int, ...]
    float_convs: dict[str, str]

    @property
    def speedup(self) -> float:
        return self.fp32.latency_ms / self.int8.latency_ms

    def to_dict(self, top: int = 15) -> dict[str, Any]:
        return {"iters": self.iters, "warmup": self.warmup, "input_shape": list(self.input_shape), "threads": 1,
                "provider": "CPUExecutionProvider", "speedup": self.speedup, "float_convs": self.float_convs,
                "fp32": self.fp32.to_dict(top), "int8": self.int8.to_dict(top)}

    def to_markdown(self, top: int = 15) -> str:
        from .ort_profile_report import format_profile

        return format_profile(self, top)


def resolve_graph(source: str | Path, precision: str) -> tuple[Path, Path]:
    """(ONNX path, artifact directory) of an .onnx file, an export directory (model.onnx) or a quantisation
    output directory (model.int8.onnx); a checkpoint or anything else is a UserInputError naming the path."""
    from .backends import load_artifact

    path = Path(source)
    if not path.exists():
        raise UserInputError(f"{path}: no such file or directory (expected an {precision} .onnx graph or its "
                             "artifact directory)")
    try:
        art = load_artifact(path)
    except UserInputError:
        raise
    except Exception as exc:  # a corrupt .onnx: onnx cannot parse it
        raise UserInputError(f"{path}: not a readable ONNX graph ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else 'unreadable'})") from exc
    if not art.onnx_path:
        raise UserInputError(f"{path}: a {art.kind} artifact without an ONNX graph; export it first "
                             f"(detflow export --format {'int8' if precision == 'int8' else 'onnx'})")
    onnx_path = Path(art.onnx_path)
    return onnx_path, onnx_path.parent


def _session(path: Path, *, profile_prefix: str | None = None, optimized: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized:
        opts.optimized_model_filepath = optimized
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidGraph, InvalidProtobuf, …: the file, not the code
        raise UserInputError(f"{path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:200]}") from exc


def _feed(session: Any, path: Path) -> dict[str, np.ndarray]:
    """A batch-1 random image at the graph's input size (sidecar ``input_size`` for symbolic H, W)."""
    from ..export.onnx import read_sidecar

    inp = session.get_inputs()[0]
    dims = list(inp.shape)
    size = read_sidecar(path).get("input_size") or [None, None]
    hw = [d if isinstance(d, int) and d > 0 else s for d, s in zip(dims[-2:], size)]
    if len(dims) != 4 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise UserInputError(f"{path}: input {inp.name!r} of shape {dims}: expected NCHW with a fixed or "
                             "sidecar-given height and width")
    rng = np.random.default_rng(0)
    return {inp.name: rng.random((1, int(dims[1]), *hw), dtype=np.float32)}


def _time_runs(session: Any, feed: dict, warmup: int, iters: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) of ``iters`` runs after ``warmup``."""
    for _ in range(warmup):
        session.run(None, feed)
    walls, cpu0 = [], time.process_time()
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(None, feed)
        walls.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(walls), 1e3 * (time.process_time() - cpu0) / iters


def _trace_nodes(trace: list[dict], iters: int) -> tuple[dict[str, tuple[str, float, str]], float]:
    """``{node: (op, median µs per run over the last iters runs, first input dtype)}`` and the median profiled
    run ms. Medians, not means: one run pre-empted on a shared machine would otherwise inflate a single node."""
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-iters:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    nodes: dict[str, list] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        run = next((i for i, (a, b) in enumerate(windows) if a <= e["ts"] <= b), None)
        if run is None:
            continue
        args = e.get("args", {})
        types = args.get("input_type_shape") or [{}]
        dtype = next(iter(types[0]), "") if types else ""
        entry = nodes.setdefault(e["name"][: -len("_kernel_time")],
                                 [args.get("op_name", "?"), [0.0] * len(windows), dtype])
        entry[1][run] += e["dur"]
    median_run = statistics.median(e["dur"] for e in runs) / 1e3 if runs else float("nan")
    return {k: (v[0], statistics.median(v[1]), v[2]) for k, v in nodes.items()}, median_run


def _kind(op: str, dtype: str) -> str:
    if op in QDQ_OPS:
        return "q/dq"
    if op in INT8_OPS or dtype in ("uint8", "int8"):
        return "int8"
    return "float"


def profile_graph(path: Path, *, iters: int, warmup: int, convs: dict[str, str] | None = None,
                  aliases: dict[str, str] | None = None, work_dir: Path) -> GraphProfile:
    """Latency and per-node profile of one graph (see the module docstring for the protocol)."""
    import onnx

    optimized = work_dir / f"{path.stem}.optimized.onnx"
    plain = _session(path)
    feed = _feed(plain, path)
    latency, cpu = _time_runs(plain, feed, warmup, iters)
    del plain
    profiled = _session(path, profile_prefix=str(work_dir / path.stem), optimized=str(optimized))
    _time_runs(profiled, feed, warmup, iters)
    trace = json.loads(Path(profiled.end_profiling()).read_text())
    times, profiled_ms = _trace_nodes(trace, iters)
    graph = onnx.load(str(optimized), load_external_data=False).graph
    feeds_int8 = quantised_downstream(graph)
    by_name = {n.name: n for n in graph.node}
    nodes = []
    for name, (op, us, dtype) in times.items():
        kind = _kind(op, dtype)
        node = by_name.get(name)
        reason = (node_reason(node, dtype, convs, feeds_int8, aliases)
                  if convs is not None and node and kind == "float" else "")
        nodes.append(NodeTime(name, op, us / 1e3, kind, reason))
    before: dict[str, int] = defaultdict(int)
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        before[n.op_type] += 1
    shape = tuple(next(iter(feed.values())).shape)
    return GraphProfile(str(path), latency, cpu, profiled_ms, nodes, dict(before), shape)


def profile_pair(fp32: str | Path, int8: str | Path, *, iters: int = 50, warmup: int = 10,
                 progress: Callable[[str], None] | None = None) -> OrtProfile:
    """Profile the fp32 and the int8 graph (paths or artifact directories) under the same protocol."""
    import onnx

    fp32_path, _ = resolve_graph(fp32, "fp32")
    int8_path, int8_dir = resolve_graph(int8, "int8")
    float_modules, kept = read_float_modules(int8_dir)
    exported = onnx.load(str(int8_path), load_external_data=False).graph
    convs, aliases = conv_reasons(exported, float_modules, kept), conv_aliases(exported)
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        work = Path(tmp)
        (work / "fp32").mkdir()
        (work / "int8").mkdir()
        if progress:
            progress(f"profiling fp32 {fp32_path} ({warmup} warm-up + {iters} runs, twice)")
        prof32 = profile_graph(fp32_path, iters=iters, warmup=warmup, work_dir=work / "fp32")
        if progress:
            progress(f"profiling int8 {int8_path}")
        prof8 = profile_graph(int8_path, iters=iters, warmup=warmup, convs=convs, aliases=aliases,
                              work_dir=work / "int8")
    return OrtProfile(prof32, prof8, iters, warmup, prof8.input_shape, convs)
