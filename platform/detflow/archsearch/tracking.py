"""MLflow records of a NAS: a parent run, one child run per sampled architecture (its spec YAML,
decisions, params and FLOPs), and the ranked specs with the best one ready for ``detflow train``.
Everything goes through :class:`detflow.tracking.Run`."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from .config import NasConfig

__all__ = ["NasResult", "log_architecture", "summarize"]


@dataclasses.dataclass
class NasResult:
    """Ranked sampled architectures (best first), the best spec YAML and the MLflow parent run."""

    name: str
    parent_run_id: str
    metric: str
    ranked: list[dict]
    best_spec_path: str | None
    path: str
    rejected: int = 0


def log_architecture(run_id: str, spec, spec_path: Path, image_size: int, train_cfg) -> None:
    """Spec YAML, block decisions, parameter count and GMACs on the architecture's child run."""
    import detmodels

    from .. import tracking

    model = detmodels.create_model("spinenet", num_classes=train_cfg.model.num_classes or 80, spec=str(spec_path))
    run = tracking.Run(run_id)
    run.log_artifact(spec_path, "architecture")
    run.log_params({f"arch.block{k + 2}": f"L{b.level}-{b.block_type}-{b.inputs[0]},{b.inputs[1]}"
                    + ("-out" if b.output else "") for k, b in enumerate(spec.blocks)})
    run.log_metrics(0, {"arch/params_M": detmodels.count_params(model) / 1e6,
                        "arch/gmacs": detmodels.count_macs(model, image_size) / 1e9})


def summarize(cfg: NasConfig, study, parent_run_id: str, exp_dir: Path) -> NasResult:
    """Rank finished samples, copy the best spec to ``best.yaml`` and record both on the parent run
    (which then ends FINISHED)."""
    import optuna
    import yaml

    from .. import tracking

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rejected = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
    done.sort(key=lambda t: t.value, reverse=cfg.mode == "max")
    ranked = [{"rank": i + 1, "trial": t.number, cfg.metric: t.value, "spec": t.user_attrs.get("spec_path"),
               "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for i, t in enumerate(done)]
    best_path = None
    if ranked and ranked[0]["spec"]:
        best_path = exp_dir / "best.yaml"
        shutil.copyfile(ranked[0]["spec"], best_path)
    from ..atomic import atomic_write

    atomic_write(exp_dir / "ranked.yaml", yaml.safe_dump(ranked, sort_keys=False))
    parent = tracking.Run(parent_run_id)
    parent.log_artifact(exp_dir / "ranked.yaml")
    if best_path:
        parent.log_artifact(best_path)
        parent.log_metrics(0, {f"best/{cfg.metric}": ranked[0][cfg.metric]})
    parent.set_tags({"detflow.nas_rejected": str(rejected)})
    parent.end("FINISHED")
    return NasResult(cfg.name, parent_run_id, cfg.metric, ranked, str(best_path) if best_path else None,
                     str(exp_dir), rejected)
