"""Sweep results: the trial table, the best config (as a YAML ``detflow train`` accepts) and the
parent MLflow run's summary (best metric and config, metric-vs-trial and importance plots)."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml

from .config import SweepConfig
from .space import apply_trial, trial_label

__all__ = ["SweepResult", "collect_results", "log_sweep_summary", "finalize_trial_runs"]


@dataclasses.dataclass
class SweepResult:
    """What a sweep returns.

    Attributes:
        name: sweep name; parent_run_id: MLflow parent run.
        trials: one dict per trial: ``trial_id``, ``label``, searched values (dotted paths), ``metric``,
            ``epochs`` (reports received), ``status`` (TERMINATED / STOPPED_EARLY / ERROR), ``mlflow_run_id``,
            ``error`` (first line of the last error, or None), ``attempts`` (times Tune started the trial:
            1 + crash retries, + 1 when a resumed sweep restarted it), ``errors`` (one line per failure),
            ``start_to_first_report_s``, ``first_epoch_s`` and ``overhead_s`` (see :mod:`detflow.tune.stats`).
        best_values / best_metric: the best trial's searched values and metric (ERROR trials never win).
        best_config_path: YAML of the full best training config, ready for ``detflow train``.
        median_trial_overhead_s: median ``overhead_s`` over the trials that reported.
    """

    name: str
    parent_run_id: str
    metric: str
    mode: str
    trials: list[dict[str, Any]]
    best_values: dict[str, Any] | None
    best_metric: float | None
    best_config_path: str | None
    path: str
    wall_time_s: float = 0.0
    median_trial_overhead_s: float | None = None

    def table_rows(self) -> list[list[str]]:
        """Header + one row per trial (the ``error`` column only when a trial failed)."""
        keys = [k for k in (self.trials[0] if self.trials else {}) if "." in k]
        with_error = any(t.get("error") for t in self.trials)
        rows = [["trial", *keys, self.metric, "epochs", "status", "attempts", *_TIMING_COLUMNS, "mlflow run",
                 *(["error"] if with_error else [])]]
        for t in self.trials:
            rows.append([t["trial_id"], *(_fmt(t.get(k)) for k in keys), _fmt(t.get("metric")), str(t["epochs"]),
                         t["status"], str(t.get("attempts", 1)), *(_fmt(t.get(c)) for c in _TIMING_COLUMNS),
                         t.get("mlflow_run_id") or "-", *([_fmt(t.get("error"))[:120]] if with_error else [])])
        return rows

    def summary_lines(self) -> list[str]:
        """What a printout states under the table: failed trials and the median Tune overhead."""
        failed = [t["trial_id"] for t in self.trials if t["status"] == "ERROR"]
        over = self.median_trial_overhead_s
        return [f"trials failed: {len(failed)}" + (f" ({', '.join(failed)})" if failed else ""),
                "median Tune overhead per trial (start → first report − first epoch): "
                + ("-" if over is None else f"{over:.1f} s")]


_TIMING_COLUMNS = ("start_to_first_report_s", "first_epoch_s", "overhead_s")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def _mlflow_runs_by_trial(parent_run_id: str) -> dict[str, str]:
    """``{trial_id: run_id}`` of the sweep's trial runs (in any experiment)."""
    from .. import tracking

    runs = tracking.search_runs(f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.found.data.tags["detflow.trial_id"]: r.run_id for r in runs if r.found.data.tags.get("detflow.trial_id")}


def base_epochs(cfg: SweepConfig, base: Any, source: str = "sweep base") -> int:
    """Epochs of a full trial: a fixed ``train.epochs`` in the space, else the base config's (a
    TrainConfig, or a mapping composed with the sweep's overrides)."""
    fixed = cfg.space.get("train.epochs")
    if fixed is not None and fixed.kind == "fixed":
        return int(fixed.fixed)
    if hasattr(base, "train"):
        return int(base.train.epochs)
    return apply_trial(base, cfg.overrides, {}, source).train.epochs


# trial directory: ``_trial_fn_<id>_<index>_<values>_<date>``; ids are ``abcde_00001`` (basic variant
# generator) or ``0277f262`` (searchers such as OptunaSearch)
_TRIAL_ID = re.compile(r"^_trial_fn_([0-9a-f]+(?:_\d{5})?)_\d+_")


def _trial_id(result) -> str:
    """Tune's trial id: from the reported metrics, else (a trial that never reported) its directory name."""
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    match = _TRIAL_ID.search(Path(result.path).name) if result.path else None
    return match.group(1) if match else "?"


def _trial_status(result, max_epochs: int) -> str:
    if result.error is not None:
        return "ERROR"
    done = (result.metrics or {}).get("training_iteration", 0)
    return "TERMINATED" if done >= max_epochs else "STOPPED_EARLY"


def collect_results(cfg: SweepConfig, grid, parent_run_id: str, exp_dir: Path, base: dict, source: str,
                    *, wall_time_s: float = 0.0) -> SweepResult:
    """Build the :class:`SweepResult` from Tune's ResultGrid and write ``best.yaml``."""
    from .stats import error_line, median_overhead, read_trial_stats

    max_epochs = cfg.scheduler.max_epochs or base_epochs(cfg, base, source)
    mlflow_ids = _mlflow_runs_by_trial(parent_run_id)
    stats = read_trial_stats(exp_dir)
    trials = []
    for result in grid:
        values = {k: (result.config or {}).get(k) for k in cfg.space}
        trial_id = _trial_id(result)
        metric = (result.metrics or {}).get(cfg.metric)
        seen = stats.get(trial_id, {})
        trials.append({
            "trial_id": trial_id, "label": trial_label(values, cfg.space), **values,
            "metric": float(metric) if metric is not None else float("nan"),
            "epochs": int((result.metrics or {}).get("training_iteration", 0)),
            "status": _trial_status(result, max_epochs), "mlflow_run_id": mlflow_ids.get(trial_id),
            "error": error_line(result.error), "attempts": int(seen.get("attempts", 1)),
            "errors": list(seen.get("errors", [])),
            **{k: seen.get(k) for k in _TIMING_COLUMNS},
        })
    best = _best_trial(trials, cfg.mode)
    best_path = None
    if best is not None:
        values = {k: best[k] for k in cfg.space}
        best_cfg = apply_trial(base, cfg.overrides, values, source)
        best_cfg = best_cfg.model_copy(update={"name": f"{cfg.name}-best"})
        best_path = exp_dir / "best.yaml"
        data = _absolute_paths(best_cfg.model_dump(mode="json"), Path(source).parent)
        from ..atomic import atomic_write

        atomic_write(best_path, yaml.safe_dump(data, sort_keys=False))
    return SweepResult(cfg.name, parent_run_id, cfg.metric, cfg.mode, trials,
                       {k: best[k] for k in cfg.space} if best else None,
                       best["metric"] if best else None, str(best_path) if best_path else None,
                       str(exp_dir), wall_time_s, median_overhead(trials))


def _best_trial(trials: list[dict], mode: str) -> dict | None:
    """The best trial by metric among those that did not end in ERROR."""
    scored = [t for t in trials if not math.isnan(t["metric"]) and t["status"] != "ERROR"]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda t: t["metric"])


def _absolute_paths(data: dict, base_dir: Path) -> dict:
    """Make the dataset paths absolute so that the best config runs from anywhere."""
    from ..paths import resolve_path

    for split in ("train", "val"):
        entry = (data.get("data") or {}).get(split)
        if entry:
            for key in ("annotations", "images"):
                entry[key] = str(resolve_path(entry[key], base_dir))
    return data


def finalize_trial_runs(result: SweepResult) -> None:
    """End the trials' MLflow child runs the way the trials ended.

    An ERROR trial's run ends FAILED with its error as tag ``detflow.error`` (the trial's own run
    context does so on an exception; a trial whose process died did not). Tune terminates a trial as
    soon as the scheduler says stop — mid-training for an ASHA stop (tag ``detflow.stopped_early``),
    or right after the last report at ``max_t`` — before the trial closes its run (which stays
    RUNNING, or ends FAILED on the interruption): the run of every trial that did not fail ends FINISHED.
    """
    from .. import tracking

    for t in result.trials:
        if not t.get("mlflow_run_id"):
            continue
        run = tracking.Run(t["mlflow_run_id"])
        status = run.status
        if t["status"] == "ERROR":
            run.set_tags({"detflow.error": (t.get("error") or "unknown error")[:500]})
            if status != "FAILED":
                run.end("FAILED")
            continue
        if t["status"] == "STOPPED_EARLY":
            run.set_tags({"detflow.stopped_early": f"after epoch {t['epochs']}"})
        if status != "FINISHED":  # RUNNING, or FAILED by the interruption of a stopped trial
            run.end("FINISHED")


def log_sweep_summary(cfg: SweepConfig, result: SweepResult, exp_dir: Path) -> None:
    """Parent run: best metric and values, the median per-trial Tune overhead, the trial table (CSV),
    best.yaml, and plots; the trials' child runs end as the trials did (:func:`finalize_trial_runs`)."""
    import csv
    import io

    from .. import tracking
    from .plots import plot_importances, plot_metric_vs_trial

    finalize_trial_runs(result)
    rows = result.table_rows()
    table_path = exp_dir / "trials.csv"
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    from ..atomic import atomic_write

    atomic_write(table_path, buf.getvalue())
    parent = tracking.Run(result.parent_run_id)
    summary: dict[str, float] = {}
    if result.best_metric is not None:
        summary[f"best/{cfg.metric}"] = result.best_metric
        parent.log_params({f"best.{k}": v for k, v in (result.best_values or {}).items()})
        parent.log_artifact(result.best_config_path)
    if result.median_trial_overhead_s is not None:
        summary["tune/median_trial_overhead_s"] = result.median_trial_overhead_s
    parent.log_metrics(0, summary)
    parent.log_artifact(table_path)
    parent.set_tags({"detflow.trials": str(len(result.trials)),
                     "detflow.failed_trials": str(sum(t["status"] == "ERROR" for t in result.trials))})
    parent.log_figure(plot_metric_vs_trial(result), "search/metric_vs_trial.png")
    fig = plot_importances(cfg, exp_dir)
    if fig is not None:
        parent.log_figure(fig, "search/param_importances.png")
    parent.end("FINISHED")
