"""``detflow data synth`` (synthetic COCO dataset), ``detflow data check`` (validate a COCO file) and
``detflow data convert`` (YOLO / VOC to COCO)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import command_group

__all__ = ["register", "synth_cmd", "check_cmd", "convert_cmd"]

data_app = command_group("Create and validate COCO datasets.", "detflow data synth --out data/synth --images 400")


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", help="Output directory (images/, train.json, val.json).",
                             show_default=False),
    images: int = typer.Option(200, "--images", help="Number of images (train + val)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    image_size: int = typer.Option(320, "--image-size", help="Side of the square images in pixels."),
    classes: int = typer.Option(4, "--classes", help="Number of shape classes (1–8)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of the images written to val.json."),
) -> None:
    """Write a synthetic COCO dataset of coloured shapes on textured backgrounds.

    Example: detflow data synth --out data/synth --images 400 --seed 0 --image-size 320 --classes 4
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..data.synth import generate_synthetic

    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("images", total=images)
        paths = generate_synthetic(out, num_images=images, seed=seed, image_size=image_size,
                                   num_classes=classes, val_fraction=val_fraction,
                                   progress=lambda done, _total: bar.update(task, completed=done))
    for split, path in (("train", paths.train_json), ("val", paths.val_json)):
        data = json.loads(path.read_text())
        typer.echo(f"{split}: {path} ({len(data['images'])} images, {len(data['annotations'])} annotations)")
    typer.echo(f"images: {paths.images_dir}")


@data_app.command("check")
def check_cmd(
    annotations: Path = typer.Argument(..., help="COCO annotation JSON.", show_default=False),
    images: Path = typer.Option(..., "--images", help="Directory the file_name entries are relative to.",
                                show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", min=1, show_default=False,
        help="Refuse images with more pixels than this (default: 178956970, Pillow's decompression-bomb limit)."),
) -> None:
    """Validate a COCO file and its images; exit 2 when there are errors.

    Checks: JSON that is not COCO, missing or undecodable images, decompression bombs, images above
    --max-pixels or with a non-positive size, file names that are absolute, contain '..' or repeat,
    boxes outside the image or with non-positive size, NaN or infinite coordinates, unknown
    category or image ids, duplicate ids, polygon errors; images without annotations are warnings.
    Each finding names the record and the bad value.

    Example: detflow data check data/synth/train.json --images data/synth/images --json
    """
    from ..data.check import check_coco

    report = check_coco(annotations, images, max_pixels=max_pixels)
    typer.echo(json.dumps(report.to_dict()) if as_json else report.format())
    report.raise_if_errors()


@data_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="yolo: data.yaml, or a folder with data.yaml or classes.txt + images/. "
                               "voc: the VOC root (Annotations/, ImageSets/Main/, JPEGImages/).", show_default=False),
    fmt: str = typer.Option(..., "--from", help="Format of SRC: yolo or voc.", show_default=False),
    out: Path = typer.Option(..., "--out", help="New output directory (<split>.json per split, images/).",
                             show_default=False),
    copy: bool = typer.Option(False, "--copy", help="Copy the images instead of linking them."),
    classes: Optional[Path] = typer.Option(None, "--classes", show_default=False,
                                           help="voc: a file of class names, one per line (default: the names "
                                                "found in the XMLs, sorted)."),
) -> None:
    """Convert a YOLO (Ultralytics) or Pascal VOC dataset to COCO JSON, then check it as `data check` does.

    Images are linked, not copied, unless --copy. Any problem (a class index out of range, a malformed
    line, a coordinate outside [0, 1], an XML without <size>, an unknown class) is one line
    FILE:LINE: what is wrong (value), exit 2, and nothing is written.

    Example: detflow data convert --from yolo datasets/coco8/data.yaml --out data/coco8
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..data.formats import convert_dataset
    from ..errors import UserInputError

    names = None
    if classes is not None:
        if not classes.is_file():
            raise UserInputError(f"--classes {classes}: file not found")
        names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
    columns = (TextColumn(f"read {fmt}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("files", total=None)
        written = convert_dataset(fmt, src, out, copy=copy, classes=names,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    for split in written:
        typer.echo(f"{split.name}: {split.annotations} ({split.num_images} images, {split.num_annotations} "
                   f"annotations, {split.num_classes} classes)")
    typer.echo(f"images: {written[0].images} ({'copied' if copy else 'linked'})")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
