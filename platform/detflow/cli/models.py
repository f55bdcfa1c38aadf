"""``detflow models list`` (registered detectors with measured size/cost), ``detflow models convert``
(official checkpoint → detflow checkpoint directory) and ``detflow models pull`` (official weights
downloaded, verified and converted: :mod:`detflow.weights`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..weights.convert import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, NUM_COCO_CLASSES, write_checkpoint_dir
from .common import command_group

__all__ = ["register", "list_cmd", "convert_cmd", "pull_cmd", "model_rows", "table_rows", "write_checkpoint_dir",
           "COCO_CATEGORY_IDS", "COCO_CLASS_NAMES"]

models_app = command_group("Registered detectors: sizes, costs and official-weight conversion.",
                           "detflow models list --no-flops")


def _measure(name: str, with_flops: bool, deploy: bool = False) -> dict[str, Any]:
    import detmodels

    entry = detmodels.get_model_entry(name)
    model = detmodels.create_model(name, num_classes=NUM_COCO_CLASSES).eval()
    if deploy:
        model = detmodels.reparameterize_model(model)
    row: dict[str, Any] = {"name": name, "family": entry.family, "task": entry.task,
                           "input_size": entry.input_size, "deploy": deploy,
                           "params_m": round(detmodels.count_params(model) / 1e6, 3)}
    if with_flops:
        macs = detmodels.count_macs(model, entry.input_size)
        row["macs"] = int(macs)
        row["gflops"] = round(2 * macs / 1e9, 4)
    return row


def model_rows(names: list[str] | None = None, *, with_flops: bool = True, deploy: bool = False,
               progress: bool = True) -> list[dict]:
    """One dict per registered model: name, family, task, input_size, deploy, params_m, and (measured
    with ``detmodels.count_macs`` at the default input size, 80 classes) macs and gflops = 2 × MACs / 1e9.
    ``deploy`` measures the re-parameterised (inference) form."""
    import detmodels
    from rich.console import Console
    from rich.progress import Progress

    names = list(names) if names is not None else detmodels.list_models()
    rows = []
    with Progress(transient=True, disable=not progress, console=Console(stderr=True)) as bar:
        task = bar.add_task("measuring models", total=len(names))
        for name in names:
            bar.update(task, description=f"building {name}")
            rows.append(_measure(name, with_flops, deploy))
            bar.advance(task)
    return rows


def table_rows(names: list[str], *, with_flops: bool = True) -> list[dict]:
    """Rows like :func:`model_rows` read from the checked zoo table (:mod:`detflow.zoo`): nothing is
    built and torch is not imported. The table holds the training form only, so no ``macs`` key."""
    from ..zoo import get_entry

    rows = []
    for name in names:
        e = get_entry(name)
        row = {"name": e.name, "family": e.family, "task": e.task, "input_size": e.input_size, "deploy": False,
               "params_m": e.params_m}
        if with_flops:
            row["gflops"] = e.gflops
        rows.append(row)
    return rows


def _table_names(family: str | None, names: list[str]) -> list[str] | None:
    """The names to list from the zoo table, or None when the table cannot answer (a family or a name
    registered in ``detmodels`` but not in the table: those are measured)."""
    from ..zoo import zoo_entries

    known = [e.name for e in zoo_entries(family)]
    if not known or any(n not in known for n in names):
        return None
    return list(names) or known


def _measured_rows(family: str | None, names: list[str], *, with_flops: bool, deploy: bool,
                   progress: bool) -> list[dict]:
    """Rows measured by building each model (imports torch and ``detmodels``)."""
    import detmodels

    from ..errors import UserInputError

    known = detmodels.list_models(family)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserInputError(f"unknown model {unknown[0]!r}" + (f" in family {family!r}" if family else "")
                             + f"; known: {', '.join(known)}")
    return model_rows(list(names) or known, with_flops=with_flops, deploy=deploy, progress=progress)


@models_app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    no_flops: bool = typer.Option(False, "--no-flops", help="Leave out the GFLOPs column."),
    family: Optional[str] = typer.Option(None, "--family", help="Only this family (rtmdet, yolov6, …)."),
    deploy: bool = typer.Option(False, "--deploy", help="Measure the re-parameterised (inference) form (builds every model: slow)."),
    measure: bool = typer.Option(False, "--measure", help="Build every model and measure it instead of reading the table (slow)."),
    names: Optional[list[str]] = typer.Argument(None, help="Only these models (default: all).", show_default=False),
) -> None:
    """List every registered model with family, task, parameters (M) and GFLOPs.

    Parameters and GFLOPs (80 classes, training form, one forward pass at the default input size,
    GFLOPs = 2 × multiply-accumulates) are read from the zoo table (detflow/zoo.py, checked against
    built models by the tests), so nothing is built; --measure (or --deploy) builds each model and
    measures it, as does a model registered but not in the table.

    Example: detflow models list --family rtmdet --json    (or: detflow models list rtmdet_tiny yolov6_n --deploy)
    """
    names = list(names or [])
    from_table = None if (measure or deploy) else _table_names(family, names)
    if from_table is not None:
        rows = table_rows(from_table, with_flops=not no_flops)
    else:
        rows = _measured_rows(family, names, with_flops=not no_flops, deploy=deploy, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    _print_rows(rows, with_flops=not no_flops, measured=from_table is None)


def _print_rows(rows: list[dict], *, with_flops: bool, measured: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    form = "deploy form" if rows and rows[0].get("deploy") else "training form"
    table = Table(title=f"registered models (80 classes, {form}, {'measured' if measured else 'zoo table'})",
                  caption="GFLOPs = 2 × multiply-accumulates at the input size (papers' 'FLOPs' are often MACs)"
                  if with_flops else None)
    heads = ["name", "family", "task", "input", "params (M)"] + (["GFLOPs (2×MACs)"] if with_flops else [])
    for head in heads:
        table.add_column(head, justify="right" if head not in ("name", "family", "task") else "left")
    for r in rows:
        cells = [r["name"], r["family"], r["task"], str(r["input_size"]), f"{r['params_m']:.2f}"]
        if with_flops:
            cells.append(f"{r['gflops']:.2f}")
        table.add_row(*cells)
    Console().print(table)


@models_app.command("convert")
def convert_cmd(
    checkpoint: Path = typer.Argument(..., help="Official checkpoint file (.pth/.pt).", show_default=False),
    model: str = typer.Option(..., "--model", help="Registered detflow model name, e.g. rtmdet_tiny.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output detflow checkpoint directory.", show_default=False),
    source: str = typer.Option("mmdet", "--source", help="Where the weights come from: mmdet, yolov6 or asff."),
) -> None:
    """Convert an officially released COCO checkpoint into a detflow checkpoint directory.

    Example: detflow models convert --source mmdet rtmdet_tiny_8xb32-300e_coco.pth --model rtmdet_tiny --out ckpt/rtmdet_tiny_coco
    """
    from ..weights.convert import convert_official

    _, n_params = convert_official(checkpoint, model, source, out)
    typer.echo(f"wrote {out} ({n_params / 1e6:.2f} M params, source {source})")


@models_app.command("pull")
def pull_cmd(
    name: str = typer.Argument(..., help="Registered model, e.g. rtmdet_tiny.", show_default=False),
    source: Optional[str] = typer.Option(None, "--source", help="mmdet, yolov6 or asff (default: the table's release)."),
    url: Optional[str] = typer.Option(None, "--url", help="Download from this URL instead (a mirror, a local server)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Pin the file's SHA-256 (64 hex digits)."),
) -> None:
    """Download a model's official COCO weights, verify the checksum and convert them into
    $DETFLOW_HOME/weights/NAME-SOURCE (a detflow checkpoint directory); print its path.

    A partial download is resumed; an already pulled model is not downloaded again. The release
    table, the checksums and DETFLOW_WEIGHTS_BASE_URL (a mirror) are described in docs/weights.md.

    Example: detflow models pull rtmdet_tiny    (then: model.pretrained: official)
    """
    from ..weights.pull import pull

    typer.echo(pull(name, source=source, url=url, sha256=sha256))


@models_app.command("zoo")
def zoo_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    family: Optional[str] = typer.Option(None, "--family", help="Only this family (rtmdet, yolov6, spinenet, yolov3_asff)."),
) -> None:
    """List every variant with parameters, GFLOPs, the papers' COCO AP and T4 TensorRT latency (each
    with its source) and whether official weights can be pulled.

    Read from a table (detflow/zoo.py), so nothing is built: params and GFLOPs are what
    `detflow models list` measures (80 classes, training form, GFLOPs = 2 × MACs); AP and latency are
    the authors' published numbers.

    Example: detflow models zoo --family yolov6    (or: detflow models zoo --json)
    """
    from ..errors import UserInputError
    from ..zoo import ZOO, zoo_rows

    families = sorted({e.family for e in ZOO})
    if family is not None and family not in families:
        raise UserInputError(f"--family: unknown family {family!r}; known: {', '.join(families)}")
    rows = zoo_rows(family)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    _print_zoo(rows)


def _print_zoo(rows: list[dict]) -> None:
    """A table that fits 80 columns: the papers' own params/FLOPs and COCO split stay in ``--json``
    (the split is also in each source's caption line)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ..zoo import SOURCES

    def num(v: Any, fmt: str = ".1f") -> str:
        return "-" if v is None else format(v, fmt)

    used = list(dict.fromkeys(r["source"] for r in rows))
    caption = ("params (M), GFLOPs: measured (80 classes, training form; GFLOPs = 2 × MACs). AP: COCO box (/mask) "
               "as published; T4 ms: TensorRT latency as published. " + " ".join(f"{s}: {SOURCES[s]}." for s in used))
    table = Table(title="detflow model zoo", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for head in ("name", "input", "params", "GFLOPs", "AP", "T4 ms", "weights", "source"):
        table.add_column(head, no_wrap=True, min_width=len(head), justify="left" if head in ("name", "AP", "source") else "right")
    for r in rows:
        ap = "-" if r["box_ap"] is None else num(r["box_ap"]) + (f"/{num(r['mask_ap'])}" if r["mask_ap"] else "")
        table.add_row(r["name"], str(r["input_size"]), f"{r['params_m']:.2f}", f"{r['gflops']:.1f}", ap,
                      num(r["t4_trt_ms"], ".2f"), "yes" if r["official_weights"] else "no", r["source"])
    console = Console()
    console.print(table)
    console.print(caption, highlight=False)  # at the terminal's width, not the (narrower) table's


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
