"""Markdown of an :class:`~detflow.bench.ort_profile.OrtProfile`: latency ratio, the per-op-type tables of both
graphs side by side, the top-N nodes of the int8 graph, and why each float node of the int8 graph is float."""
from __future__ import annotations

from collections import defaultdict
from itertools import zip_longest
from typing import Any

__all__ = ["format_profile"]


def _graph_row(label: str, g: Any) -> str:
    shares = g.kind_shares()
    return (f"| {label} | {g.latency_ms:.2f} | {g.cpu_ms:.2f} | {g.profiled_ms:.2f} | {g.kernel_ms:.2f} | "
            f"{shares.get('int8', 0):.1f} | {shares.get('q/dq', 0):.1f} | {shares.get('float', 0):.1f} |")


def _summary(report: Any) -> list[str]:
    f, q = report.fp32, report.int8
    return [
        f"ONNX Runtime CPU EP, 1 intra-op thread, batch 1, input {tuple(report.input_shape)}, "
        f"{report.warmup} warm-up + {report.iters} timed runs per graph",
        "",
        "| graph | latency ms (median) | CPU ms/run | profiled run ms (median) | Σ node medians ms | int8 % | "
        "q/dq % | float % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        _graph_row("fp32", f),
        _graph_row("int8", q),
        "",
        f"**int8 speed-up (fp32 / int8): {report.speedup:.2f}× median wall, "
        f"{f.cpu_ms / q.cpu_ms:.2f}× CPU time**",
    ]


def _op_cells(row: tuple | None) -> list[str]:
    if row is None:
        return ["", "", "", ""]
    op, count, ms, share, kind = row
    label = op if kind != "int8" or op.startswith("Q") else f"{op} (int8)"
    return [label, str(count), f"{ms:.3f}", f"{share:.1f}"]


def _ops_side_by_side(report: Any, top: int) -> list[str]:
    lines = ["| fp32 op | n | ms | % | int8 op | n | ms | % |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for a, b in zip_longest(report.fp32.ops()[:top], report.int8.ops()[:top]):
        lines.append("| " + " | ".join(_op_cells(a) + _op_cells(b)) + " |")
    return lines


def _top_nodes(report: Any, top: int) -> list[str]:
    lines = ["| int8-graph node | op | ms | class | why float |", "|---|---|---:|---|---|"]
    for n in sorted(report.int8.nodes, key=lambda n: -n.ms)[:top]:
        lines.append(f"| {n.name} | {n.op} | {n.ms:.3f} | {n.kind} | {n.reason} |")
    return lines


_CATEGORIES = {
    "keep_float": "kept float by partial PTQ (--keep-float, most sensitive convs)",
    "skip_layers": "in the artifact's float_modules (--skip-layers, DFL, model's own list)",
    "float output": "prediction conv: float output by design; ORT fuses only DQ→Conv→Q",
    "not annotated": "not annotated by the conv-only quantizer: float between DQ and Q",
    "layout": "layout nodes ORT inserts (NCHWc blocks for float Conv)",
    "head decode": "head decode: nothing quantised downstream",
}


def _category(node: Any) -> str:
    """The reason's category (the text before its first ':', after the module name for a conv)."""
    reason = node.reason.split(": ", 1)[1] if node.op == "Conv" and ": " in node.reason else node.reason
    return reason.split(":")[0]


def _float_reasons(report: Any) -> list[str]:
    """Float kernel time of the int8 graph grouped by reason, then the exported convs ORT keeps float."""
    groups: dict[str, list] = defaultdict(lambda: [0, 0.0, set()])
    for n in report.int8.nodes:
        if n.kind == "float":
            entry = groups[_category(n)]
            entry[0] += 1
            entry[1] += n.ms
            entry[2].add(n.op)
    total = report.int8.kernel_ms or 1.0
    lines = ["| why float | nodes | ops | ms | % of int8 kernel time |", "|---|---:|---|---:|---:|"]
    for key, (count, ms, ops) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        label = _CATEGORIES.get(key, key)
        lines.append(f"| {label} | {count} | {', '.join(sorted(ops))} | {ms:.3f} | {100 * ms / total:.1f} |")
    convs = [f"- `{m}`: {why}" for m, why in report.float_convs.items()]
    return lines + (["", "Exported convs ORT keeps float:"] + convs if convs else [])


def format_profile(report: Any, top: int = 15) -> str:
    """The whole report as markdown."""
    parts = [*_summary(report), "", f"Per op type (top {top}; `(int8)`: a non-Q op on uint8/int8 tensors):", "",
             *_ops_side_by_side(report, top), "", f"Top {top} nodes of the int8 graph ORT runs:", "",
             *_top_nodes(report, top), "", "Float nodes of the int8 graph, by reason:", "", *_float_reasons(report)]
    return "\n".join(parts)
