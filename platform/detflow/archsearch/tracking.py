"""Results of a NAS on Ray Tune and their MLflow records: one row per trial (metric, cost, status,
attempts, times, spec, child run), the Pareto front of accuracy vs cost, the winner under the
constraint and its transfer config (proxy → full scale), all logged to the parent run.
Everything goes through :class:`detflow.tracking.Run`."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .config import NasConfig

__all__ = ["NasResult", "trial_rows", "log_architecture", "summarize"]


@dataclasses.dataclass
class NasResult:
    """What a search returns (``detflow.nas`` / ``detflow nas --json``).

    Attributes:
        ranked: one dict per trial, best ``metric`` first: ``trial`` (launch order), ``trial_id``,
            ``metric``, ``cost/…`` values, ``status`` (TERMINATED / STOPPED_EARLY / ERROR / REJECTED),
            ``attempts``, ``errors``, ``error``, ``epochs``, ``spec`` (proxy-scale YAML),
            ``mlflow_run_id``, ``started_at`` / ``ended_at`` (epoch s), ``on_front``.
        front: the Pareto-optimal rows (accuracy max, cost min; the best row without a cost).
        best: the winner (best ``metric`` among rows meeting ``constraint``), or None.
        best_spec_path / best_config_path: the winner's full-scale spec and ``kind: train`` YAML.
        message: why there is no winner, when there is none.
    """

    name: str
    parent_run_id: str
    metric: str
    cost: str | None
    constraint: dict[str, float]
    ranked: list[dict[str, Any]]
    front: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_spec_path: str | None
    best_config_path: str | None
    path: str
    wall_time_s: float = 0.0
    message: str = ""

    @property
    def rejected(self) -> int:
        return sum(r["status"] == "REJECTED" for r in self.ranked)


def _cost_keys(cfg: NasConfig) -> list[str]:
    from .cost import COSTS, metric_name

    return [metric_name(k) for k in COSTS if k != "latency_ms" or cfg.cost == "latency_ms"]


def _status(result, epochs_done: int, max_epochs: int, rejected: bool) -> str:
    if rejected:
        return "REJECTED"
    if result.error is not None:
        return "ERROR"
    return "TERMINATED" if epochs_done >= max_epochs else "STOPPED_EARLY"


def _row(cfg: NasConfig, result, exp_dir: Path, stats: dict, runs: dict[str, str]) -> dict[str, Any]:
    from ..tune.results import _trial_id
    from ..tune.stats import error_line
    from .search import REJECTED_KEY, SPEC_KEY
    from .trial import save_trial_spec, trial_spec_path

    metrics, config = result.metrics or {}, result.config or {}
    trial_id = _trial_id(result)
    seen = stats.get(trial_id, {})
    epochs = int(metrics["epoch"]) + 1 if "epoch" in metrics else 0
    value = metrics.get(cfg.metric)
    spec = trial_spec_path(exp_dir, trial_id)
    if not spec.exists() and SPEC_KEY in config:  # the trial ran on a node that does not share this disk
        save_trial_spec(config, cfg, spec)
    return {
        "trial_id": trial_id, "metric": float(value) if value is not None else float("nan"),
        **{k: float(metrics[k]) if k in metrics else float("nan") for k in _cost_keys(cfg)},
        "status": _status(result, epochs, cfg.proxy.epochs, REJECTED_KEY in config), "epochs": epochs,
        "attempts": int(seen.get("attempts", 1)), "errors": list(seen.get("errors", [])),
        "error": error_line(result.error) or config.get(REJECTED_KEY),
        "spec": str(spec) if spec.exists() else None, "mlflow_run_id": runs.get(trial_id),
        # the end: seen by the driver callback, else the time of the trial's last result
        "started_at": seen.get("started_at"), "ended_at": seen.get("ended_at") or metrics.get("timestamp"),
        "decisions": {k: v for k, v in config.items() if k not in (SPEC_KEY, REJECTED_KEY)},
    }


def trial_rows(cfg: NasConfig, grid, parent_run_id: str, exp_dir: Path) -> list[dict[str, Any]]:
    """One row per Tune trial (launch order: ``trial`` 0, 1, …), from the ResultGrid, the per-trial
    stats (``stats/trial_stats.json``) and the child runs found by ``detflow.trial_id``."""
    from ..tune.results import _mlflow_runs_by_trial
    from ..tune.stats import read_trial_stats

    stats, runs = read_trial_stats(exp_dir), _mlflow_runs_by_trial(parent_run_id)
    rows = [_row(cfg, result, exp_dir, stats, runs) for result in grid]
    rows.sort(key=lambda r: (r["started_at"] is None, r["started_at"] or 0.0, r["trial_id"]))
    for i, row in enumerate(rows):
        row["trial"] = i
    return rows


def log_architecture(row: dict[str, Any], cost_keys: list[str]) -> None:
    """Spec YAML (artifact ``architecture/``), searched decisions (params) and cost on the trial's child run."""
    from .. import tracking

    run = tracking.Run(row["mlflow_run_id"])
    if row["spec"]:
        run.log_artifact(row["spec"], "architecture")
    run.log_params({f"arch.{k}": v for k, v in row["decisions"].items()}, skip_existing=True)
    run.log_metrics(0, {k: row[k] for k in cost_keys if not math.isnan(row[k])})


def _choose(cfg: NasConfig, rows: list[dict]) -> tuple[list[dict], dict | None, str]:
    """The Pareto front, the winner and, without one, the reason."""
    from .pareto import choose_winner, pareto_front
    from .search import cost_metric

    ok = [r for r in rows if r["status"] in ("TERMINATED", "STOPPED_EARLY") and not math.isnan(r["metric"])]
    objectives = [("metric", cfg.mode)] + ([(cost_metric(cfg.cost), "min")] if cfg.cost else [])
    front = pareto_front(ok, objectives)
    constraint = {cost_metric(k): v for k, v in cfg.constraint.items()}
    on_front = {r["trial_id"] for r in front}  # a tie on metric goes to the trial on the front (cheaper)
    winner = choose_winner(sorted(ok, key=lambda r: r["trial_id"] not in on_front), "metric", constraint or None,
                           cfg.mode)
    if winner is not None:
        return front, winner, ""
    if not ok:
        return front, None, f"NAS {cfg.name}: no trial finished with a {cfg.metric} (trials: {len(rows)})"
    limits = ", ".join(f"{k} <= {v:g}" for k, v in cfg.constraint.items())
    return front, None, f"NAS {cfg.name}: no architecture meets the constraint {limits} (trials finished: {len(ok)})"


def _transfer(cfg: NasConfig, winner: dict, base, base_path: Path, exp_dir: Path) -> tuple[str, str]:
    """``best_spec.yaml`` (the winner at full scale) and ``best_train.yaml`` (``detflow train`` runs it)."""
    from .transfer import full_scale_spec, write_train_config

    spec = full_scale_spec(winner["spec"], base.model.model_dump(mode="json"), exp_dir / "best_spec.yaml")
    train = write_train_config(base, spec, exp_dir / "best_train.yaml", f"{cfg.name}-best", base_dir=base_path.parent)
    return str(spec), str(train)


def summarize(cfg: NasConfig, grid, parent_run_id: str, exp_dir: Path, base, base_path: Path, *,
              wall_time_s: float = 0.0) -> NasResult:
    """Rows, front, winner and transfer files; every record on MLflow (:func:`_log_parent`)."""
    from ..tune.results import finalize_trial_runs

    rows = trial_rows(cfg, grid, parent_run_id, exp_dir)
    front, winner, message = _choose(cfg, rows)
    on_front = {r["trial_id"] for r in front}
    for row in rows:
        row["on_front"] = row["trial_id"] in on_front
    spec_path = config_path = None
    for stale in ("best_spec.yaml", "best_train.yaml"):
        (exp_dir / stale).unlink(missing_ok=True)
    if winner is not None:
        spec_path, config_path = _transfer(cfg, winner, base, base_path, exp_dir)
    ranked = sorted(rows, key=lambda r: (math.isnan(r["metric"]), -r["metric"] if cfg.mode == "max" else r["metric"]))
    result = NasResult(cfg.name, parent_run_id, cfg.metric, cfg.cost, dict(cfg.constraint), ranked, front, winner,
                       spec_path, config_path, str(exp_dir), wall_time_s, message)
    finalize_trial_runs(SimpleNamespace(trials=[r for r in rows if r["status"] != "REJECTED"]))
    for row in rows:
        if row["mlflow_run_id"]:
            log_architecture(row, _cost_keys(cfg))
    _log_parent(cfg, result, rows, exp_dir)
    return result


def _plots(cfg: NasConfig, result: NasResult, rows: list[dict], exp_dir: Path) -> dict[str, Any]:
    """``{artifact file: figure}``: Pareto front (with a cost), metric per trial, Optuna importances."""
    from ..tune.plots import plot_importances, plot_metric_vs_trial
    from .pareto import plot_pareto
    from .search import cost_metric

    named = lambda rs: [{**r, cfg.metric: r["metric"]} for r in rs]  # noqa: E731  (axis label)
    figs = {"search/metric_vs_trial.png": plot_metric_vs_trial(SimpleNamespace(
        trials=rows, mode=cfg.mode, metric=cfg.metric, name=f"NAS {cfg.name}"))}
    if cfg.cost:
        ok = [r for r in rows if r["status"] in ("TERMINATED", "STOPPED_EARLY")]
        figs["search/pareto_front.png"] = plot_pareto(
            named(ok), named(result.front), cost_metric(cfg.cost), cfg.metric,
            {cost_metric(k): v for k, v in cfg.constraint.items()} or None, f"NAS {cfg.name}: Pareto front",
            cfg.mode)
    importances = plot_importances(cfg, exp_dir, objective=0 if cfg.cost else None)
    if importances is not None:
        figs["search/param_importances.png"] = importances
    return figs


def _log_parent(cfg: NasConfig, result: NasResult, rows: list[dict], exp_dir: Path) -> None:
    """Parent run: ranked.yaml, pareto_front.csv, plots, the winner's files and metrics; ends FINISHED."""
    import yaml

    from .. import tracking
    from ..atomic import atomic_write
    from .pareto import front_table

    keys = ["trial", "trial_id", "metric", *_cost_keys(cfg), "status", "mlflow_run_id"]
    atomic_write(exp_dir / "ranked.yaml", yaml.safe_dump(_plain(result.ranked), sort_keys=False))
    atomic_write(exp_dir / "pareto_front.csv", front_table(rows, result.front, keys))
    parent = tracking.Run(result.parent_run_id)
    for name in ("ranked.yaml", "pareto_front.csv"):
        parent.log_artifact(exp_dir / name)
    for path in (result.best_spec_path, result.best_config_path):
        if path:
            parent.log_artifact(path)
    for name, fig in _plots(cfg, result, rows, exp_dir).items():
        parent.log_figure(fig, name)
    if result.best is not None:
        best = result.best
        parent.log_metrics(0, {f"best/{cfg.metric}": best["metric"],
                               **{f"best/{k}": best[k] for k in _cost_keys(cfg) if not math.isnan(best[k])}})
    parent.set_tags({"detflow.trials": str(len(rows)), "detflow.failed_trials": str(sum(r["status"] == "ERROR" for r in rows)),
                     "detflow.nas_rejected": str(result.rejected), "detflow.nas_front": str(len(result.front)),
                     **({"detflow.nas_message": result.message} if result.message else {})})
    parent.end("FINISHED")


def _plain(rows: list[dict]) -> list[dict]:
    """Rows as YAML-safe data (NaN → None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
