"""``detflow compare``: a table of MLflow runs chosen by sweep, NAS, workflow, tag or experiment.

Columns are the run name, its status, the params that differ between the selected runs and the
chosen metrics (default: the ``val/bbox_mAP*`` metrics present), rows sorted by the first metric
(best first: highest, or lowest for a loss, time or latency). Runs that differ only in a seed param
(any param whose name ends in ``seed``: ``train.seed``, ``seed``, ``recipe.seed`` …) form one row
whose metrics read ``mean ± std (n=…)`` (std: the sample standard deviation, ``n - 1``).

Example::

    from detflow.tracking.compare import Selection, compare_runs
    table = compare_runs(Selection(sweep="alpha"), metrics=["val/bbox_mAP"])
    for row in table.rows:
        print(row.name, row.params, row.cell("val/bbox_mAP"))

A run that is the parent of another selected run (a workflow's parent run, a workflow step run
holding its training run) summarises its children and is left out, as is a sweep's or NAS's parent
run (tag ``detflow.kind``: sweep | nas) unless the selection names ``detflow.kind`` itself.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UserInputError
from .run import Run, search_runs
from .runs import _default_mode

__all__ = ["Selection", "RunRecord", "MetricCell", "CompareRow", "Comparison", "compare_runs", "select_runs",
           "build_comparison", "is_seed_param", "parse_tags", "DEFAULT_METRIC_PREFIX"]

DEFAULT_METRIC_PREFIX = "val/bbox_mAP"
# Params that name where a run is, not what it is: never a differing column nor a grouping key.
IDENTITY_PARAMS = frozenset({"name", "storage"})
_PARENT_TAG = "mlflow.parentRunId"
_SEARCH_KINDS = ("sweep", "nas")  # tag detflow.kind of a search's parent run


def is_seed_param(key: str) -> bool:
    """True for a param whose (dotted) name ends in ``seed``: ``train.seed``, ``seed``, ``data_seed``."""
    return key.lower().endswith("seed")


def parse_tags(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["k=v", …]`` (``--tag k=v``) or a mapping → ``{k: v}``; an item without ``=`` is a UserInputError."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--tag {item}: expected KEY=VALUE, e.g. --tag detflow.family=rtmdet")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Selection:
    """Which runs to compare; given selectors are AND-ed. ``tags`` maps tag keys to exact values."""

    sweep: str | None = None
    nas: str | None = None
    workflow: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    experiment: str | None = None

    def describe(self) -> str:
        """The selectors as CLI options, e.g. ``--sweep alpha --tag k=v``."""
        parts = [f"--{k} {v}" for k, v in (("sweep", self.sweep), ("nas", self.nas), ("workflow", self.workflow),
                                             ("experiment", self.experiment)) if v]
        return " ".join(parts + [f"--tag {k}={v}" for k, v in self.tags.items()])

    def tag_filters(self) -> dict[str, str]:
        """Every tag a selected run must carry (``detflow.sweep``, ``detflow.nas``, ``detflow.workflow_run_id``)."""
        named = {"detflow.sweep": self.sweep, "detflow.nas": self.nas, "detflow.workflow_run_id": self.workflow}
        return {**{k: v for k, v in named.items() if v}, **dict(self.tags)}


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as found: its id, name, status, latest metrics, params and tags."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> "RunRecord":
        found = run.found
        info, data = found.info, found.data
        return cls(run_id=info.run_id, name=info.run_name or info.run_id[:8], status=info.status,
                   experiment_id=info.experiment_id, start_time=int(info.start_time or 0),
                   params=dict(data.params), metrics=dict(data.metrics), tags=dict(data.tags))


# ------------------------------------------------------------------------------------ selection
def _quote(value: str, what: str) -> str:
    if "'" in value:
        raise UserInputError(f"{what} {value}: a value with a single quote cannot be searched in MLflow")
    return f"'{value}'"


def _query(tags: Mapping[str, str], where: str) -> str:
    """An MLflow filter string requiring every tag of ``tags``."""
    for key in tags:
        if not re.fullmatch(r"[A-Za-z0-9_.\-/ ]+", key):
            raise UserInputError(f"{where}: tag key {key!r}: expected letters, digits, '_', '-', '.', '/' or ' '")
    return " and ".join(f"tags.`{k}` = {_quote(v, where)}" for k, v in tags.items())


def _experiments(name: str | None) -> list[str] | None:
    """The id of experiment ``name`` as a one-item list (None: search every experiment)."""
    if name is None:
        return None
    from .run import RetryPolicy, _client, call_with_retry

    client = _client()
    exp = call_with_retry(lambda: client.get_experiment_by_name(name), RetryPolicy(), f"experiment {name}")
    if exp is None:
        raise UserInputError(f"--experiment {name}: no such MLflow experiment")
    return [exp.experiment_id]


def select_runs(selection: Selection) -> list[RunRecord]:
    """The runs ``selection`` matches (with a search's parent, that parent's children too), without
    the parents of other selected runs; oldest first. No selector, or no run matched: UserInputError."""
    tags = selection.tag_filters()
    if not tags and not selection.experiment:
        raise UserInputError("detflow compare: give a selector: --sweep NAME, --nas NAME, --workflow RUN_ID, "
                             "--tag KEY=VALUE or --experiment NAME")
    where = f"detflow compare {selection.describe()}"
    experiments = _experiments(selection.experiment)
    found = {r.run_id: r for r in search_runs(_query(tags, where), experiments=experiments)}
    rest = {k: v for k, v in tags.items() if k not in ("detflow.sweep", "detflow.nas")}
    for parent in [r for r in found.values() if r.found.data.tags.get("detflow.kind") in _SEARCH_KINDS]:
        query = _query({_PARENT_TAG: parent.run_id, **rest}, where)
        found.update({r.run_id: r for r in search_runs(query, experiments=[parent.found.info.experiment_id])})
    records = [RunRecord.of(r) for r in found.values()]
    parents = {r.tags.get(_PARENT_TAG) for r in records}
    records = sorted((r for r in records if not _is_summary(r, parents, selection)),
                     key=lambda r: (r.start_time, r.name))
    if not records:
        raise UserInputError(f"{where}: no MLflow run matches (tracking store: {_store_uri()})")
    return records


def _is_summary(record: RunRecord, parents: set[str | None], selection: Selection) -> bool:
    """True for the parent of another selected run (its id in ``parents``), and for a sweep's or
    NAS's parent run (even before its first trial) unless the selection asks for ``detflow.kind``."""
    if record.run_id in parents:
        return True
    return "detflow.kind" not in selection.tags and record.tags.get("detflow.kind") in _SEARCH_KINDS


def _store_uri() -> str:
    from .store import configure, redact_url

    return redact_url(configure())


# ------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class MetricCell:
    """One metric of one row: the runs' values, their mean and sample std (0 for one value)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else (0.0 if self.values else None)

    def text(self, grouped: bool) -> str:
        """``0.4123``, ``0.4123 ± 0.0101 (n=3)`` for a group, ``-`` when no run logged it."""
        if not self.values:
            return "-"
        if not grouped:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


@dataclass(frozen=True)
class CompareRow:
    """One row: a run, or a group of runs that differ only in seed params (``grouped``)."""

    name: str
    status: str
    run_ids: tuple[str, ...]
    params: dict[str, str]
    metrics: dict[str, MetricCell]

    @property
    def grouped(self) -> bool:
        return len(self.run_ids) > 1

    def cell(self, metric: str) -> str:
        return self.metrics[metric].text(self.grouped)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "run_ids": list(self.run_ids), "n": len(self.run_ids),
                "params": dict(self.params), "metrics": {k: v.to_dict() for k, v in self.metrics.items()}}


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` returns: the differing ``params`` and ``metrics`` columns and the rows."""

    selection: Selection
    params: list[str]
    metrics: list[str]
    rows: list[CompareRow]

    @property
    def num_runs(self) -> int:
        return sum(len(r.run_ids) for r in self.rows)

    def header(self) -> list[str]:
        return ["run", "status", *self.params, *self.metrics]

    def text_rows(self) -> list[list[str]]:
        """The table as strings, one list per row, in :meth:`header` order."""
        return [[r.name, r.status, *(_short(r.params.get(p, "-")) for p in self.params),
                 *(r.cell(m) for m in self.metrics)] for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"selection": self.selection.describe(), "params": self.params, "metrics": self.metrics,
                "num_runs": self.num_runs, "rows": [r.to_dict() for r in self.rows]}


def _short(value: str) -> str:
    """A long float param for the eye: ``0.00011209413928285802`` → ``0.0001121`` (JSON keeps it whole)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 and math.isfinite(number) else value


def _differing_params(records: Sequence[RunRecord]) -> list[str]:
    """Param keys whose value is not the same in every run (a missing key counts as a value),
    sorted; a key whose values repeat another's run for run is left out (``resolved.*`` last:
    ``resolved.recipe.optimizer.lr`` repeats ``train.optimizer.lr``)."""
    keys = sorted({k for r in records for k in r.params} - IDENTITY_PARAMS,
                  key=lambda k: (k.startswith("resolved."), k))
    kept: dict[tuple, str] = {}
    for key in keys:
        column = tuple(r.params.get(key) for r in records)
        if len(set(column)) > 1:
            kept.setdefault(column, key)
    return sorted(kept.values())


def _metric_columns(records: Sequence[RunRecord], metrics: Sequence[str] | None) -> list[str]:
    """The chosen metrics (each must be logged by some run), else the ``val/bbox_mAP*`` ones present."""
    present = sorted({k for r in records for k in r.metrics})
    if metrics:
        for name in metrics:
            if name not in present:
                shown = ", ".join(present[:12]) + (" …" if len(present) > 12 else "")
                raise UserInputError(f"--metric {name}: no selected run logged it; metrics present: {shown or 'none'}")
        return list(metrics)
    return sorted((k for k in present if k.startswith(DEFAULT_METRIC_PREFIX)), key=lambda k: (len(k), k))


def _status(records: Sequence[RunRecord]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(s if len(counts) == 1 else f"{s}×{n}" for s, n in counts.items())


def _row(records: Sequence[RunRecord], params: Sequence[str], metrics: Sequence[str]) -> CompareRow:
    """One row of ``records`` (one run, or a seed group: its seed params listed, metrics aggregated)."""
    values = {p: ", ".join(dict.fromkeys(r.params.get(p, "-") for r in records)) for p in params}
    cells = {m: MetricCell(tuple(r.metrics[m] for r in records if m in r.metrics and math.isfinite(r.metrics[m])))
             for m in metrics}
    name = records[0].name if len(records) == 1 else f"{records[0].name} (+{len(records) - 1})"
    return CompareRow(name=name, status=_status(records), run_ids=tuple(r.run_id for r in records),
                      params=values, metrics=cells)


def _sort_key(row: CompareRow, metric: str | None) -> tuple:
    """Best first by ``metric`` (max, or min for a loss/time/latency); rows without it last."""
    mean = row.metrics[metric].mean if metric else None
    if mean is None:
        return (1, 0.0, row.name)
    return (0, -mean if _default_mode(metric) == "max" else mean, row.name)


def build_comparison(records: Sequence[RunRecord], *, selection: Selection = Selection(),
                     metrics: Sequence[str] | None = None, group_seeds: bool = True) -> Comparison:
    """The table of ``records``: differing params, ``metrics`` columns, seed groups (see module docstring)."""
    params = _differing_params(records)
    columns = _metric_columns(records, metrics)
    key_params = [p for p in params if not (group_seeds and is_seed_param(p))]
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        key = tuple(record.params.get(p) for p in key_params) if group_seeds else (record.run_id,)
        groups.setdefault(key, []).append(record)
    rows = [_row(g, params, columns) for g in groups.values()]
    rows.sort(key=lambda r: _sort_key(r, columns[0] if columns else None))
    return Comparison(selection=selection, params=params, metrics=columns, rows=rows)


def compare_runs(selection: Selection, *, metrics: Sequence[str] | None = None,
                 group_seeds: bool = True) -> Comparison:
    """Select the runs (:func:`select_runs`) and build their table (:func:`build_comparison`)."""
    return build_comparison(select_runs(selection), selection=selection, metrics=metrics, group_seeds=group_seeds)
