"""Plots of a sweep logged to its MLflow parent run."""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot_metric_vs_trial", "plot_importances"]


def plot_metric_vs_trial(result):
    """Metric of each trial in launch order, with the best-so-far line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [t["metric"] for t in result.trials]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = list(range(1, len(values) + 1))
    ax.scatter(xs, [v if not math.isnan(v) else None for v in values], label="trial")
    best, run = [], None
    for v in values:
        if not math.isnan(v):
            run = v if run is None else (max(run, v) if result.mode == "max" else min(run, v))
        best.append(run)
    ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.metric)
    ax.set_title(f"sweep {result.name}")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_importances(cfg, exp_dir: Path, *, objective: int | None = None):
    """Optuna's parameter importances (its default evaluator, PED-ANOVA: which values of each
    parameter the best trials share), when the study has enough finished trials. ``objective``: the
    index of the objective of a multi-objective study (a NAS with a cost)."""
    if cfg.search.name not in ("tpe", "nsga2"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    url = cfg.search.storage or f"sqlite:///{exp_dir / 'optuna.db'}"
    try:
        study = optuna.load_study(study_name=cfg.name, storage=url)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < 2 or len(complete[0].params) < 1:
            return None
        target = None if objective is None else _objective_target(study, objective)
        importances = optuna.importance.get_param_importances(study, target=target)
    except Exception:  # importance needs ≥2 distinct completed trials; nothing to plot otherwise
        return None
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (PED-ANOVA)")
    fig.tight_layout()
    return fig


def _objective_target(study, objective: int):
    """The importance target of objective ``objective``: PED-ANOVA with a target looks for low values,
    so a maximised objective (the NAS's AP) is negated."""
    import optuna

    sign = -1.0 if study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return lambda t: sign * t.values[objective]
