"""Sweep results: the trial table, the best config (as a YAML ``detflow train`` accepts) and the
parent MLflow run's summary (best metric and config, metric-vs-trial and importance plots)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from .config import SweepConfig
from .space import apply_trial, trial_label

__all__ = ["SweepResult", "collect_results", "log_sweep_summary"]


@dataclasses.dataclass
class SweepResult:
    """What a sweep returns.

    Attributes:
        name: sweep name; parent_run_id: MLflow parent run.
        trials: one dict per trial: ``trial_id``, ``label``, searched values (dotted paths), ``metric``,
            ``epochs`` (reports received), ``status`` (TERMINATED / STOPPED_EARLY / ERROR), ``mlflow_run_id``, ``error``.
        best_values / best_metric: the best trial's searched values and metric.
        best_config_path: YAML of the full best training config, ready for ``detflow train``.
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

    def table_rows(self) -> list[list[str]]:
        keys = [k for k in (self.trials[0] if self.trials else {}) if "." in k]
        rows = [["trial", *keys, self.metric, "epochs", "status", "mlflow run"]]
        for t in self.trials:
            metric = t.get("metric")
            rows.append([t["trial_id"], *(_fmt(t.get(k)) for k in keys), _fmt(metric), str(t["epochs"]),
                         t["status"], t.get("mlflow_run_id") or "-"])
        return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def _mlflow_runs_by_trial(parent_run_id: str) -> dict[str, str]:
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags.get("detflow.trial_id"): r.info.run_id for r in runs if r.data.tags.get("detflow.trial_id")}


def _trial_status(result, max_epochs: int) -> str:
    if result.error is not None:
        return "ERROR"
    done = (result.metrics or {}).get("training_iteration", 0)
    return "TERMINATED" if done >= max_epochs else "STOPPED_EARLY"


def collect_results(cfg: SweepConfig, grid, parent_run_id: str, exp_dir: Path, base: dict, source: str,
                    *, wall_time_s: float = 0.0) -> SweepResult:
    """Build the :class:`SweepResult` from Tune's ResultGrid and write ``best.yaml``."""
    from .runner import _base_epochs

    max_epochs = cfg.scheduler.max_epochs or _base_epochs(cfg, base, source)
    mlflow_ids = _mlflow_runs_by_trial(parent_run_id)
    trials = []
    for result in grid:
        values = {k: (result.config or {}).get(k) for k in cfg.space}
        trial_id = Path(result.path).name.split("_")[1] if result.path else "?"
        trial_id = (result.metrics or {}).get("trial_id", trial_id)
        metric = (result.metrics or {}).get(cfg.metric)
        trials.append({
            "trial_id": trial_id, "label": trial_label(values, cfg.space), **values,
            "metric": float(metric) if metric is not None else float("nan"),
            "epochs": int((result.metrics or {}).get("training_iteration", 0)),
            "status": _trial_status(result, max_epochs), "mlflow_run_id": mlflow_ids.get(trial_id),
            "error": str(result.error).splitlines()[0] if result.error else None,
        })
    best = _best_trial(trials, cfg.mode)
    best_path = None
    if best is not None:
        values = {k: best[k] for k in cfg.space}
        best_cfg = apply_trial(base, cfg.overrides, values, source)
        best_cfg = best_cfg.model_copy(update={"name": f"{cfg.name}-best"})
        best_path = exp_dir / "best.yaml"
        data = _absolute_paths(best_cfg.model_dump(mode="json"), Path(source).parent)
        best_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return SweepResult(cfg.name, parent_run_id, cfg.metric, cfg.mode, trials,
                       {k: best[k] for k in cfg.space} if best else None,
                       best["metric"] if best else None, str(best_path) if best_path else None,
                       str(exp_dir), wall_time_s)


def _best_trial(trials: list[dict], mode: str) -> dict | None:
    scored = [t for t in trials if not math.isnan(t["metric"])]
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


def log_sweep_summary(cfg: SweepConfig, result: SweepResult, exp_dir: Path) -> None:
    """Parent run: best metric and values, the trial table (CSV), best.yaml, and plots."""
    import csv

    import mlflow

    from .. import tracking
    from .plots import plot_importances, plot_metric_vs_trial

    rows = result.table_rows()
    table_path = exp_dir / "trials.csv"
    with table_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with tracking.start_run(cfg.name, run_id=result.parent_run_id):
        if result.best_metric is not None:
            mlflow.log_metric(f"best/{cfg.metric}", result.best_metric)
            mlflow.log_params({f"best.{k}": v for k, v in (result.best_values or {}).items()})
            mlflow.log_artifact(result.best_config_path)
        mlflow.log_artifact(str(table_path))
        mlflow.set_tag("detflow.trials", str(len(result.trials)))
        tracking.log_figure(plot_metric_vs_trial(result), "search/metric_vs_trial.png")
        fig = plot_importances(cfg, exp_dir)
        if fig is not None:
            tracking.log_figure(fig, "search/param_importances.png")
