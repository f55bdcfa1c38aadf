"""Rich tables for the terminal: the step table of a run and each benchmark step's table."""
from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

__all__ = ["step_table", "benchmark_table", "make_console", "key_metrics", "print_run", "run_json"]

_STATUS_STYLE = {"succeeded": "green", "cached": "cyan", "failed": "red", "running": "yellow",
                 "pending": "dim", "not_run": "dim", "cancelled": "magenta", "interrupted": "yellow"}
_PREFERRED = ("val/AP50", "val/bbox_mAP50", "val/AP", "val/bbox_mAP", "AP50", "AP", "mAP50", "best", "max_abs_diff")


def key_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    """A few headline metrics (preferred keys first) as ``k=v`` text."""
    numbers = {k: v for k, v in (metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("bench/")}
    keys = [k for k in _PREFERRED if k in numbers] or sorted(numbers)
    return "  ".join(f"{k}={numbers[k]:.4g}" for k in keys[:limit])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def step_table(steps: dict[str, dict], title: str = "steps") -> Table:
    """``steps``: ``RunResult.steps`` (``{step_id: {kind, status, attempts, duration_s, outputs, error}}``)."""
    table = Table(title=title)
    for col in ("step", "kind", "status", "attempts", "duration", "key metrics / error"):
        table.add_column(col)
    for sid, info in steps.items():
        status = info["status"]
        detail = info.get("error") if status in ("failed", "not_run", "cancelled") and info.get("error") else \
            key_metrics((info.get("outputs") or {}).get("metrics") or {})
        table.add_row(sid, info.get("kind", ""), f"[{_STATUS_STYLE.get(status, '')}]{status}[/]",
                      str(info.get("attempts", 0)), _duration(info.get("duration_s")), str(detail or ""))
    return table


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def benchmark_table(rows: Iterable[dict], title: str = "benchmark") -> Table:
    """One row per (artifact, backend, precision, batch): latency, throughput and mAP (+ mask mAP50) side by side."""
    table = Table(title=title)
    cols = [("artifact", "artifact"), ("precision", "precision"), ("backend", "backend"), ("batch_size", "batch"),
            ("input_size", "input"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
            ("throughput", "img/s"), ("mAP", "mAP"), ("mAP50", "mAP50"), ("segm_mAP50", "segm mAP50"),
            ("status", "status")]  # segm mAP50: instance models only, "—" for detection-only rows
    for _, head in cols:
        table.add_column(head, justify="right" if head not in ("artifact", "precision", "backend", "status") else "left")
    for row in rows:
        table.add_row(*(_fmt(row.get(key)) for key, _ in cols))
    return table


def make_console() -> Console:
    """A console wide enough for the benchmark table, also when output is piped."""
    import shutil
    import sys

    width = shutil.get_terminal_size((160, 24)).columns if sys.stdout.isatty() else 160
    return Console(width=max(width, 120))


def print_run(result: Any, console: Console | None = None) -> None:
    """Print a run's step table and the table of every benchmark step (``result``: a RunResult)."""
    console = console or make_console()
    console.print(step_table(result.steps, title=f"workflow run {result.run_id}: {result.status}"))
    for sid, info in result.steps.items():
        rows = (info.get("outputs") or {}).get("rows")
        if info.get("kind") == "benchmark" and rows:
            console.print(benchmark_table(rows, title=f"benchmark ({sid})"))
            protocol = (info.get("outputs") or {}).get("protocol") or {}
            if protocol:
                console.print(f"[dim]protocol: NMS {protocol.get('nms')}; threads {protocol.get('threads')}; "
                              f"device {protocol.get('device')}[/]")
    if result.error:
        console.print(f"[red]{result.error}[/]")


def run_json(result: Any) -> dict:
    return {"run_id": result.run_id, "status": result.status, "error": result.error, "steps": result.steps}
