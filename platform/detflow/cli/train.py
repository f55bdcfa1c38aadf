"""``detflow train`` (Ray Train + MLflow)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .output import json_stdout

__all__ = ["register", "train_cmd"]


def train_cmd(
    config: Path = typer.Argument(..., help="Training config YAML (see workflows/configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: KEY=VALUE (repeatable), e.g. train.epochs=5."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray Train workers (scaling.workers)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", min=0, help="GPUs per worker."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest run of this config (same name and storage)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a registered detector on Ray Train and log it to MLflow.

    Example: detflow train workflows/configs/rtmdet_tiny_synth.yaml --set train.epochs=5 --workers 2
    """
    from ..config import TrainConfig
    from ..config.kinds import load_user_config
    from ..errors import UserInputError
    from ..train import run_training
    from ..train.runner import latest_run

    overrides = list(set_)
    if workers is not None:
        overrides.append(f"scaling.workers={workers}")
    if gpus_per_worker is not None:
        overrides.append(f"scaling.gpus_per_worker={gpus_per_worker}")
    cfg = load_user_config(TrainConfig, config, overrides)  # a user file: `kind: train` required
    if resume and latest_run(cfg, config.resolve().parent) is None:
        raise UserInputError(f"{config}: --resume: no run of {cfg.name!r} to resume in its storage; start it without --resume")
    with json_stdout(as_json):
        result = run_training(cfg, config_dir=config.resolve().parent, resume=resume, progress=not as_json)
    if as_json:
        payload = {k: v for k, v in result.to_dict().items() if k != "history"}
        typer.echo(json.dumps(payload, default=str))
        return
    typer.echo(f"MLflow run:      {result.run_id}")
    for key in sorted(result.metrics):
        if key.endswith(("mAP", "mAP50", "mAP75")):
            typer.echo(f"best {key:<18} {result.metrics[key]:.4f}")
    typer.echo(f"best checkpoint: {result.checkpoint}")
    typer.echo(f"last checkpoint: {result.last_checkpoint}")
    typer.echo(f"wall time:       {result.wall_time_s:.1f} s")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
