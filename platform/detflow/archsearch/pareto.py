"""Accuracy–cost trade-off of a search: the Pareto front, the constrained winner, a plot and a CSV table.

A row is one trial as a dict (``{"trial": 3, "val/bbox_mAP": 0.41, "latency_ms": 12.0, …}``). Row ``a``
dominates ``b`` when it is at least as good on every objective and strictly better on one; the front
is the rows no other row dominates (rows tied on every objective are all kept). A row whose
objective is missing, None or NaN is never on the front. The constraint form ("best AP under 30 ms",
as in SpineNet §4's FLOPs-matched comparisons) is :func:`choose_winner`.

>>> rows = [{"ap": 0.4, "ms": 10.0}, {"ap": 0.5, "ms": 20.0}, {"ap": 0.3, "ms": 25.0}]
>>> [r["ap"] for r in pareto_front(rows, [("ap", "max"), ("ms", "min")])]
[0.4, 0.5]
>>> choose_winner(rows, "ap", {"ms": 15})["ap"]
0.4
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

__all__ = ["pareto_front", "choose_winner", "plot_pareto", "front_table", "valid_number"]


def valid_number(value: Any) -> bool:
    """True for a finite int/float (not bool, None or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_objectives(objectives: Sequence[tuple[str, str]]) -> None:
    if not objectives:
        raise ValueError("pareto_front: objectives: expected at least one (key, 'max'|'min'), got []")
    for key, mode in objectives:
        if mode not in ("max", "min"):
            raise ValueError(f"pareto_front: objectives: {key!r}: expected mode 'max' or 'min', got {mode!r}")


def _dominates(a: dict, b: dict, objectives: Sequence[tuple[str, str]]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on at least one."""
    better = False
    for key, mode in objectives:
        x, y = (a[key], b[key]) if mode == "max" else (-a[key], -b[key])
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(rows: list[dict], objectives: list[tuple[str, str]]) -> list[dict]:
    """The non-dominated rows, in their input order (``objectives``: ``[(key, "max"|"min"), …]``)."""
    _check_objectives(objectives)
    valid = [r for r in rows if all(valid_number(r.get(k)) for k, _ in objectives)]
    return [r for r in valid if not any(_dominates(o, r, objectives) for o in valid if o is not r)]


def _meets(row: dict, constraint: dict[str, float] | None) -> bool:
    return all(valid_number(row.get(k)) and row[k] <= limit for k, limit in (constraint or {}).items())


def choose_winner(rows: list[dict], metric: str, constraint: dict[str, float] | None,
                  mode: str = "max") -> dict | None:
    """The row with the best finite ``metric`` (highest for ``mode="max"``, lowest for ``"min"``) among
    those meeting every ``constraint`` (key ≤ value; a row without a finite value for a constrained key
    does not meet it); None when no row qualifies. Ties keep the earliest row."""
    sign = 1.0 if mode == "max" else -1.0
    best = None
    for row in rows:
        if (valid_number(row.get(metric)) and _meets(row, constraint)
                and (best is None or sign * row[metric] > sign * best[metric])):
            best = row
    return best


def plot_pareto(rows: list[dict], front: list[dict], x: str, y: str, constraint: dict | None, title: str,
                mode: str = "max"):
    """Every trial as a point (``x`` cost, ``y`` accuracy), the front as a step line, a constraint on
    ``x`` as a dashed vertical line, the winner (best ``y`` under the constraint) as a star.

    Returns a matplotlib Figure (Agg; the caller saves or logs it and closes it)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    pts = [r for r in rows if valid_number(r.get(x)) and valid_number(r.get(y))]
    ax.scatter([r[x] for r in pts], [r[y] for r in pts], color="tab:gray", alpha=0.7, label="trials")
    line = sorted(front, key=lambda r: r[x])
    if line:
        ax.step([r[x] for r in line], [r[y] for r in line], where="post", color="tab:blue", marker="o",
                label="Pareto front")
    if constraint and x in constraint:
        ax.axvline(constraint[x], color="tab:red", linestyle="--", label=f"{x} ≤ {constraint[x]:g}")
    winner = choose_winner(pts, y, constraint, mode)
    if winner is not None:
        ax.scatter([winner[x]], [winner[y]], marker="*", s=220, color="tab:orange", zorder=3, label="winner")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def front_table(rows: list[dict], front: list[dict], keys: Sequence[str]) -> str:
    """CSV text of the front (``keys`` as columns, one line per front row, sorted by the first key);
    ``rows`` gives the trial count in no column: it is accepted so callers pass what they plot."""
    del rows
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    ordered = sorted(front, key=lambda r: (not valid_number(r.get(keys[0])), r.get(keys[0]) or 0)) if keys else front
    for row in ordered:
        writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
    return out.getvalue()
