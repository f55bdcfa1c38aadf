"""MLflow records of a NAS: a parent run, one child run per sampled architecture (its spec YAML,
decisions, params and FLOPs), and the ranked specs with the best one ready for ``detflow train``."""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import NasConfig

__all__ = ["log_architecture", "summarize"]


def log_architecture(run_id: str, spec, spec_path: Path, image_size: int, train_cfg) -> None:
    """Spec YAML, block decisions, parameter count and GMACs on the architecture's child run."""
    import detmodels
    import mlflow

    from .. import tracking

    model = detmodels.create_model("spinenet", num_classes=train_cfg.model.num_classes or 80, spec=str(spec_path))
    with tracking.start_run(spec.name, run_id=run_id):
        mlflow.log_artifact(str(spec_path), "architecture")
        mlflow.log_params({f"arch.block{k + 2}": f"L{b.level}-{b.block_type}-{b.inputs[0]},{b.inputs[1]}"
                           + ("-out" if b.output else "") for k, b in enumerate(spec.blocks)})
        mlflow.log_metric("arch/params_M", detmodels.count_params(model) / 1e6)
        mlflow.log_metric("arch/gmacs", detmodels.count_macs(model, image_size) / 1e9)


def summarize(cfg: NasConfig, study, parent_run_id: str, exp_dir: Path):
    """Rank finished samples, copy the best spec to ``best.yaml`` and record both on the parent run."""
    import mlflow
    import optuna
    import yaml

    from .. import tracking
    from .runner import NasResult

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rejected = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    done.sort(key=lambda t: t.value, reverse=cfg.mode == "max")
    ranked = [{"rank": i + 1, "trial": t.number, cfg.metric: t.value, "spec": t.user_attrs.get("spec_path"),
               "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for i, t in enumerate(done)]
    best_path = None
    if ranked and ranked[0]["spec"]:
        best_path = exp_dir / "best.yaml"
        shutil.copyfile(ranked[0]["spec"], best_path)
    (exp_dir / "ranked.yaml").write_text(yaml.safe_dump(ranked, sort_keys=False))
    with tracking.start_run(cfg.name, run_id=parent_run_id):
        mlflow.log_artifact(str(exp_dir / "ranked.yaml"))
        if best_path:
            mlflow.log_artifact(str(best_path))
            mlflow.log_metric(f"best/{cfg.metric}", ranked[0][cfg.metric])
        mlflow.set_tag("detflow.nas_rejected", str(rejected))
    return NasResult(cfg.name, parent_run_id, cfg.metric, ranked, str(best_path) if best_path else None,
                     str(exp_dir), rejected)
