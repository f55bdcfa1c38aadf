"""``detflow compare``: MLflow runs side by side, chosen by sweep, NAS, workflow, tag or experiment."""
from __future__ import annotations

import json
from typing import Optional

import typer

__all__ = ["register", "compare_cmd"]


def compare_cmd(
    sweep: Optional[str] = typer.Option(None, "--sweep", help="The trials of sweep NAME (tag detflow.sweep)."),
    nas: Optional[str] = typer.Option(None, "--nas", help="The trials of architecture search NAME (tag detflow.nas)."),
    workflow: Optional[str] = typer.Option(None, "--workflow", help="The runs of workflow run RUN_ID."),
    tag: list[str] = typer.Option([], "--tag", help="Runs with tag KEY=VALUE (repeatable)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Only runs of MLflow experiment NAME."),
    metric: list[str] = typer.Option([], "--metric", help="A metric column (repeatable; the first sorts the rows). "
                                     "Default: the val/bbox_mAP* metrics present."),
    no_group: bool = typer.Option(False, "--no-group", help="One row per run, even for runs that differ only in seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Compare MLflow runs: the params that differ, the chosen metrics, mean ± std over seeds.

    Example: detflow compare --sweep rtmdet-tiny-dsl --metric val/bbox_mAP50
    """
    from ..sdk import compare

    table = compare(sweep=sweep, nas=nas, workflow=workflow, tags=tag, experiment=experiment, metrics=metric,
                    group_seeds=not no_group)
    if as_json:
        typer.echo(json.dumps(table.to_dict()))
        return
    _print_table(table)


def _print_table(table) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{table.num_runs} runs ({table.selection.describe()})"
    if len(table.rows) < table.num_runs:
        title += f", {len(table.rows)} rows: runs differing only in seed are grouped"
    out = Table(title=title)
    for i, head in enumerate(table.header()):
        out.add_column(head, justify="right" if i >= 2 + len(table.params) else "left")
    for row in table.text_rows():
        out.add_row(*row)
    console = Console()
    if not console.is_terminal:  # piped into a file or a pager: no column cut at 80 characters
        console = Console(width=max(console.width, 240))
    console.print(out)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
