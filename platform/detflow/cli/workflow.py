"""``detflow run | submit | status | logs | resume | cancel``: workflow commands."""
from __future__ import annotations

import json
import time
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import RuntimeFailure
from .output import json_stdout

__all__ = ["register"]

_STATE = typer.Option(None, "--state-url", help="SQLAlchemy URL of the state DB (default $DETFLOW_STATE_URL or "
                      "sqlite:///$DETFLOW_HOME/workflows.db).")


def _console() -> Console:
    from ..workflows.report import make_console

    return make_console()


def _finish(result, as_json: bool) -> None:  # noqa: ANN001
    from ..workflows.report import print_run, run_json

    if as_json:
        typer.echo(json.dumps(run_json(result), indent=2, default=str))
    else:
        print_run(result)
        if result.status == "succeeded":
            _console().print(f"MLflow: run [bold]detflow ui[/] and open the experiment '{result.workflow}' "
                            "(click 'Model training'); the parent run is named after the run id, one child per step.")
    if result.status != "succeeded":
        raise RuntimeFailure(result.error or f"run {result.run_id} {result.status}; continue it with "
                             f"`detflow resume {result.run_id}`")


def _resources_text(resources: dict) -> str:
    """``num_cpus=1, node_b=0.001``: a step's Ray resources, custom ones flattened."""
    flat = {**{k: v for k, v in resources.items() if k != "resources"}, **resources.get("resources", {})}
    return ", ".join(f"{k}={v:g}" for k, v in flat.items())


def run(
    workflow: str = typer.Argument(..., help="Workflow YAML."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override, e.g. steps.train.with.train.epochs=3."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved DAG and each step's cache status."),
    run_id: Optional[str] = typer.Option(None, "--run-id", hidden=True),
    no_lineage: bool = typer.Option(False, "--no-lineage", help="Do not track in MLflow."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    state_url: Optional[str] = _STATE,
) -> None:
    """Validate and run a workflow here (the driver), e.g. `detflow run workflows/quickstart.yaml`.

    Example: detflow run workflows/quickstart.yaml --set steps.train.with.train.epochs=2
    """
    from .. import sdk

    if dry_run:
        rows = sdk.plan(workflow, overrides=set_ or [], state_url=state_url)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title=f"{workflow}: resolved DAG (run order)")
        for col in ("step", "kind", "needs", "cache", "resources", "with"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["step"], r["kind"], ", ".join(r["needs"]) or "—", r["cache"],
                          _resources_text(r["resources"]), json.dumps(r["with"])[:80])
        _console().print(table)
        return
    with json_stdout(as_json):
        result = sdk.run(workflow, overrides=set_ or [], address=address, state_url=state_url, run_id=run_id,
                         lineage=not no_lineage)
    _finish(result, as_json)


def submit(
    workflow: str = typer.Argument(..., help="Workflow YAML."),
    address: str = typer.Option(..., "--address", help="Ray job server, e.g. http://HEAD:8265."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override, e.g. defaults.image_size=256."),
    no_lineage: bool = typer.Option(False, "--no-lineage", help="Do not track in MLflow."),
    python: Optional[str] = typer.Option(None, "--python", help="Interpreter on the cluster that has detflow "
                                         "(default $DETFLOW_CLUSTER_PYTHON or `python`)."),
    state_url: Optional[str] = typer.Option(None, "--state-url", help="State DB the cluster reaches, e.g. "
                                            "postgresql+psycopg://USER@HOST/DB (default $DETFLOW_STATE_URL; not "
                                            "SQLite); the job gets it without its password."),
) -> None:
    """Run the workflow driver on a Ray cluster as a Ray Job; prints the run id at once.

    Uploads the workflow and the config files it names; data and storage must be shared (s3://…).

    Example: detflow submit workflows/rtmdet.yaml --address http://HEAD:8265 --state-url postgresql+psycopg://detflow@db/detflow
    """
    from .. import sdk

    typer.echo(sdk.submit(workflow, address=address, overrides=set_ or [], state_url=state_url,
                          lineage=not no_lineage, python=python))


def status(
    run_id: Optional[str] = typer.Argument(None, help="Run id (default: list recent runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray job server (http://HEAD:8265) to sync "
                                          "the run with (default: the one it was submitted to)."),
    state_url: Optional[str] = _STATE,
) -> None:
    """Steps of a run with status, duration and key metrics; without RUN_ID, the recent runs.

    Example: detflow status quickstart-20260101-120000-ab12 --json
    """
    from .. import sdk
    from ..workflows.report import print_run, run_json

    if run_id is None:
        runs = sdk.list_runs(state_url=state_url)
        if as_json:
            typer.echo(json.dumps(runs, indent=2))
            return
        table = Table(title="workflow runs")
        for col in ("run id", "workflow", "status", "started", "error"):
            table.add_column(col)
        for r in runs:
            table.add_row(r["run_id"], r["workflow"], r["status"],
                          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])), (r["error"] or "")[:60])
        _console().print(table)
        return
    result = sdk.status(run_id, state_url=state_url, address=address)
    if as_json:
        typer.echo(json.dumps(run_json(result), indent=2, default=str))
    else:
        print_run(result)


def logs(
    run_id: str = typer.Argument(..., help="Run id."),
    step: Optional[str] = typer.Argument(None, help="Step id (default: the driver log)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray job server (http://HEAD:8265) to read "
                                          "the driver log from (default: the one the run was submitted to)."),
    state_url: Optional[str] = _STATE,
) -> None:
    """Print the driver log of a run (a submitted run's from the Ray Jobs API), or one step's log.

    Example: detflow logs quickstart-20260101-120000-ab12 train
    """
    from .. import sdk

    typer.echo(sdk.logs(run_id, step, state_url=state_url, address=address), nl=False)


def resume(
    run_id: str = typer.Argument(..., help="Run id to continue."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    no_lineage: bool = typer.Option(False, "--no-lineage", help="Do not track in MLflow."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    state_url: Optional[str] = _STATE,
) -> None:
    """Continue a failed, cancelled or interrupted run: finished steps are kept, the rest run.

    Example: detflow resume quickstart-20260101-120000-ab12
    """
    from .. import sdk

    with json_stdout(as_json):
        result = sdk.resume(run_id, address=address, state_url=state_url, lineage=not no_lineage)
    _finish(result, as_json)


def cancel(
    run_id: str = typer.Argument(..., help="Run id to stop."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray job server (http://HEAD:8265) whose job "
                                          "to stop (default: the one the run was submitted to)."),
    state_url: Optional[str] = _STATE,
) -> None:
    """Stop a running workflow: running steps are cancelled, pending ones will not start; a submitted
    run's Ray job is stopped, and the command returns once Ray reads it as ended.

    Example: detflow cancel quickstart-20260101-120000-ab12
    """
    from .. import sdk

    typer.echo(f"{run_id}: {sdk.cancel(run_id, state_url=state_url, address=address)}")


def register(app: typer.Typer) -> None:
    for fn in (run, submit, status, logs, resume, cancel):
        app.command(fn.__name__)(fn)
