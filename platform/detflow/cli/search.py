"""``detflow sweep`` (Ray Tune + Optuna) and ``detflow nas`` (SpineNet architecture search)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .output import json_stdout

__all__ = ["register"]


def sweep_cmd(
    config: Optional[Path] = typer.Argument(None, help="Sweep YAML (omit with --resume NAME)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: KEY=VALUE (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume the interrupted sweep NAME."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local Ray)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a hyperparameter sweep: every trial is a real `detflow train` on Ray Train.

    Example: detflow sweep workflows/sweeps/rtmdet_tiny_sweep.yaml --set num_samples=4
    """
    from ..tune import find_sweep, load_sweep_config, run_sweep

    def run(cfg, config_dir: Path):
        try:
            return run_sweep(cfg, config_dir=config_dir, resume=bool(resume), ray_address=address,
                             verbose=0 if as_json else 1)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP (see detflow.signals)
            _end_interrupted_trials(cfg)
            raise

    _search("sweep", config, set_, resume, as_json, load=load_sweep_config, find=find_sweep, run=run,
            to_json=_sweep_json, print_table=_print_sweep_table)


def _sweep_json(result) -> dict:
    return {"name": result.name, "parent_run_id": result.parent_run_id, "metric": result.metric,
            "best_metric": result.best_metric, "best_values": result.best_values,
            "best_config": result.best_config_path, "trials": result.trials}


def _end_interrupted_trials(cfg) -> None:
    """After an interrupted sweep: stop Ray (the trial workers with it), then end the trials' MLflow
    runs they left RUNNING as KILLED. ``detflow sweep --resume NAME`` continues the sweep."""
    from ..signals import shutdown_ray
    from ..tune.runner import _STATE_FILE, sweep_dir

    shutdown_ray()
    state = sweep_dir(cfg) / _STATE_FILE
    if not state.exists():
        return
    try:
        from .. import tracking

        parent = tracking.Run(json.loads(state.read_text())["parent_run_id"])
        for run in parent.children(status="RUNNING"):
            run.end("KILLED")
    except Exception as exc:  # noqa: BLE001 — the interrupt matters more than this bookkeeping
        typer.echo(f"warning: could not end the interrupted trials' MLflow runs: {exc}", err=True)


def _search(command: str, config, overrides, resume, as_json: bool, *, load, find, run, to_json, print_table) -> None:
    """What ``detflow sweep`` and ``detflow nas`` do: take the config (the stored one of ``--resume
    NAME``, else the YAML given, with ``--set``), ``run(cfg, config_dir)`` with stdout kept for the
    JSON under ``--json``, then print ``to_json(result)`` or ``print_table(result)``."""
    from ..errors import UserInputError

    if resume:
        cfg, config_dir = find(resume)
    elif config is None:
        raise UserInputError(f"detflow {command}: give a {command} YAML, or --resume NAME")
    else:
        cfg, config_dir = load(config, overrides)
    with json_stdout(as_json):
        result = run(cfg, config_dir)
    if as_json:
        typer.echo(json.dumps(to_json(result), default=str))
    else:
        print_table(result)


def _print_sweep_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = result.table_rows()
    table = Table(title=f"sweep {result.name} ({len(result.trials)} trials)")
    for head in rows[0]:
        table.add_column(head)
    for row in rows[1:]:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"best {result.metric}: {result.best_metric}  values: {result.best_values}")
    console.print(f"best config: {result.best_config_path}  (detflow train {result.best_config_path})")
    console.print(f"MLflow parent run: {result.parent_run_id}")
    for line in result.summary_lines():
        console.print(line)


def nas_cmd(
    config: Optional[Path] = typer.Argument(None, help="NAS YAML (omit with --resume NAME)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: KEY=VALUE (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume the interrupted search NAME."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local Ray)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """SpineNet architecture search on Ray Tune: each sampled spec is a trial training the proxy task;
    ranks by val AP and a cost (Pareto front), writes the winner as a `detflow train` YAML.

    Example: detflow nas workflows/nas/spinenet_proxy_nas.yaml --set num_samples=4
    """
    import dataclasses

    from ..archsearch import find_nas, load_nas_config, run_nas

    def run(cfg, config_dir: Path):
        try:
            return run_nas(cfg, config_dir=config_dir, resume=bool(resume), ray_address=address,
                           verbose=0 if as_json else 1)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: `detflow nas --resume NAME` continues
            from ..signals import shutdown_ray

            shutdown_ray()
            raise

    _search("nas", config, set_, resume, as_json, load=load_nas_config, find=find_nas, run=run,
            to_json=dataclasses.asdict, print_table=_print_nas_table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return "-" if value is None else str(value)


def _print_nas_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    cost = f"cost/{result.cost}" if result.cost else None
    table = Table(title=f"NAS {result.name}: {len(result.ranked)} trials, {result.rejected} rejected")
    for head in ("trial", "trial id", result.metric, *([cost] if cost else []), "status", "attempts", "front"):
        table.add_column(head)
    for row in result.ranked:
        table.add_row(str(row["trial"]), row["trial_id"], _fmt(row["metric"]), *([_fmt(row.get(cost))] if cost else []),
                      row["status"], str(row["attempts"]), "*" if row["on_front"] else "")
    console = Console()
    console.print(table)
    if result.best is None:
        console.print(result.message)
    else:
        console.print(f"winner: trial {result.best['trial']} ({result.metric} {_fmt(result.best['metric'])})")
        console.print(f"best spec: {result.best_spec_path}")
        console.print(f"best config: {result.best_config_path}  (detflow train {result.best_config_path})")
    console.print(f"MLflow parent run: {result.parent_run_id}")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_cmd)
    app.command("nas")(nas_cmd)
