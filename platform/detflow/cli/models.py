"""``detflow models list`` (registered detectors with measured size/cost) and ``detflow models convert``
(official checkpoint → detflow checkpoint directory)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from .common import command_group

__all__ = ["register", "list_cmd", "convert_cmd", "model_rows", "write_checkpoint_dir",
           "COCO_CATEGORY_IDS", "COCO_CLASS_NAMES"]

models_app = command_group("Registered detectors: sizes, costs and official-weight conversion.",
                           "detflow models list --no-flops")

# The 80 COCO-2017 detection classes (contiguous order) and their ids in instances_*.json.
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_CATEGORY_IDS = tuple(
    [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
     *range(84, 91)]
)
NUM_COCO_CLASSES = 80


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


@models_app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    no_flops: bool = typer.Option(False, "--no-flops", help="Skip the (slow) FLOP measurement."),
    family: Optional[str] = typer.Option(None, "--family", help="Only this family (rtmdet, yolov6, …)."),
    deploy: bool = typer.Option(False, "--deploy", help="Measure the re-parameterised (inference) form."),
    names: Optional[list[str]] = typer.Argument(None, help="Only these models (default: all).", show_default=False),
) -> None:
    """List every registered model with family, task, parameters (M) and GFLOPs.

    Parameters and FLOPs are measured by building each model (80 classes) and running one forward
    pass at its default input size; GFLOPs = 2 × multiply-accumulates.

    Example: detflow models list --family rtmdet --json    (or: detflow models list rtmdet_tiny yolov6_n --deploy)
    """
    import detmodels

    from ..errors import UserInputError

    known = detmodels.list_models(family)
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise UserInputError(f"unknown model {unknown[0]!r}" + (f" in family {family!r}" if family else "")
                             + f"; known: {', '.join(known)}")
    rows = model_rows(list(names) if names else known, with_flops=not no_flops, deploy=deploy, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    _print_rows(rows, with_flops=not no_flops)


def _print_rows(rows: list[dict], *, with_flops: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    form = "deploy form" if rows and rows[0].get("deploy") else "training form"
    table = Table(title=f"registered models (80 classes, {form}, measured)",
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


def write_checkpoint_dir(model: Any, out: Path, *, model_name: str, input_size: int, meta_extra: dict | None = None,
                         class_names: tuple[str, ...] = COCO_CLASS_NAMES,
                         category_ids: tuple[int, ...] = COCO_CATEGORY_IDS) -> Path:
    """Write ``out/{model.pt, config.yaml, meta.json}`` in the layout of docs/architecture.md, atomically
    (:func:`detflow.engine.checkpoint.save_checkpoint`: a crash never leaves a half-written directory).

    There is no training state: optimizer/scheduler/scaler/rng are ``None`` and epoch/step 0. The
    config's data split is a placeholder (empty paths) that fine-tuning replaces.
    """
    from .. import __version__
    from ..config.train import DataConfig, DatasetSplit, TrainConfig, model_config_class
    from ..engine.checkpoint import save_checkpoint

    state = {"model": model.state_dict(), "ema": None, "optimizer": None, "scheduler": None, "scaler": None,
             "epoch": 0, "step": 0, "rng": None}
    cfg = TrainConfig(name=model_name.replace("/", "_"),
                      model=model_config_class(model_name)(name=model_name, num_classes=len(class_names)),
                      data=DataConfig(train=DatasetSplit(annotations="", images=""), image_size=input_size))
    meta = {"model": model_name, "num_classes": len(class_names), "category_ids": list(category_ids),
            "class_names": list(class_names), "epoch": 0, "metrics": {}, "detflow_version": __version__,
            **(meta_extra or {})}
    return save_checkpoint(out, state=state, config=cfg, meta=meta)


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
    import pickle

    import detmodels

    from ..errors import UserInputError

    try:
        entry = detmodels.get_model_entry(model)
    except KeyError as exc:
        raise UserInputError(f"--model: {exc.args[0]}") from None
    if not checkpoint.is_file():
        raise UserInputError(f"{checkpoint}: no such checkpoint file")
    net = detmodels.create_model(model, num_classes=NUM_COCO_CLASSES)
    try:
        detmodels.load_official_weights(net, checkpoint, source=source)
    except (ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        # WeightsError (a ValueError): unmapped keys, shape mismatches, unknown source; others: not a checkpoint
        raise UserInputError(f"{checkpoint}: cannot load as {source} weights: {exc}".splitlines()[0]) from None
    meta = {"source": source, "source_checkpoint": str(checkpoint.resolve())}
    write_checkpoint_dir(net, out, model_name=model, input_size=entry.input_size, meta_extra=meta)
    typer.echo(f"wrote {out} ({detmodels.count_params(net) / 1e6:.2f} M params, source {source})")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
