"""``detflow eval``: COCO metrics of a result file against ground truth (pycocotools COCOeval)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register", "eval_cmd", "print_metrics"]


def eval_cmd(
    gt: Path = typer.Option(..., "--gt", help="COCO annotation file (ground truth).", show_default=False),
    pred: Path = typer.Option(..., "--pred", help="COCO results JSON (list of detections).", show_default=False),
    iou_type: str = typer.Option("bbox", "--iou-type", help="bbox or segm."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (AP, AP50, …, per_class)."),
    plot_pr: Optional[Path] = typer.Option(None, "--plot-pr", help="Also write a precision-recall plot (PNG)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show pycocotools' own output."),
) -> None:
    """Evaluate predictions with COCOeval: AP, AP50, AP75, APs/m/l, AR1/10/100 and per-class AP.

    Example: detflow eval --gt data/synth/val.json --pred predictions.json --iou-type bbox --json
    """
    from ..evaluation import evaluate_coco

    metrics = evaluate_coco(gt, pred, iou_type, plot_pr=plot_pr, verbose=verbose)
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        print_metrics(metrics, title=f"{iou_type} — {pred.name}")
        if plot_pr is not None:
            typer.echo(f"precision-recall plot: {plot_pr}")


def _fmt(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.4f}"


def print_metrics(metrics: dict, *, title: str = "COCO metrics") -> None:
    """Rich tables of the summary metrics and per-class AP (``-1`` shows as n/a: no such objects)."""
    from rich.console import Console
    from rich.table import Table

    from ..evaluation import METRIC_KEYS

    console = Console()
    summary = Table(title=title)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key in (k for k in METRIC_KEYS if k in metrics):
        summary.add_row(key, _fmt(metrics[key]))
    console.print(summary)
    per_class = metrics.get("per_class") or {}
    if per_class:
        table = Table(title="per-class AP@[.5:.95]")
        table.add_column("class")
        table.add_column("AP", justify="right")
        for name, ap in per_class.items():
            table.add_row(str(name), _fmt(ap))
        console.print(table)
    if metrics.get("note"):
        console.print(f"note: {metrics['note']}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
