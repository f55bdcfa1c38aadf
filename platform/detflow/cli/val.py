"""``detflow val ARTIFACT --data CONFIG``: COCO mAP of any artifact the benchmark runs (checkpoint
directory, ONNX export, int8 ONNX) on the val split of a training config or of a data section.

The artifact goes through :func:`detflow.bench.evaluate.evaluate_artifact`: the same letterbox,
backend runners and post-processing ``detflow bench`` measures with, so the numbers agree.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["register", "val_cmd", "val_split", "config_split", "default_backend"]


def val_split(config: Path) -> Any:
    """The val ``DatasetSplit`` (COCO) of ``config``, paths resolved against its directory: a training
    config (``kind: train``) or a data section (``val``, optionally ``format``, at the top level). A
    YOLO / VOC split (``format: yolo|voc``) is converted once, as training does (content-hash cache)."""
    return config_split(config, "val")


def config_split(config: Path, which: str) -> Any:
    """The ``which`` (``train`` | ``val``) ``DatasetSplit`` (COCO) of a training config or a data
    section file, as :func:`val_split` describes."""
    from ..config.base import read_yaml
    from ..config.kinds import load_user_config
    from ..config.train import DatasetSplit, TrainConfig
    from ..errors import ConfigError
    from ..paths import resolve_path

    raw = read_yaml(config)
    if not isinstance(raw, dict):
        raise ConfigError([f"{config}: (top level): expected a training config or a data section, "
                           f"got {type(raw).__name__}"])
    if "kind" in raw:
        section = load_user_config(TrainConfig, config).data
        split, fmt, field = getattr(section, which), getattr(section, "format", "coco"), f"data.{which}"
    else:
        split, fmt, field = _data_section_split(raw, config, which), raw.get("format", "coco"), which
        if fmt not in ("coco", "yolo", "voc"):
            raise ConfigError([f"{config}: format: expected coco | yolo | voc, got {fmt!r}"])
    if split is None:
        raise ConfigError([f"{config}: {field}: expected a {which} split (annotations + images), got null"])
    base = config.resolve().parent
    annotations, images = resolve_path(split.annotations, base), resolve_path(split.images, base)
    if fmt != "coco":
        from ..data.formats.cache import cached_split

        done = cached_split(fmt, annotations, images)
        annotations, images = done.annotations, done.images
    return DatasetSplit(annotations=str(annotations), images=str(images))


def _data_section_split(raw: dict, config: Path, which: str) -> Any:
    """``which`` of a data-section file as a ``DatasetSplit`` (None when absent)."""
    from ..config.train import DatasetSplit
    from ..errors import ConfigError

    split = raw.get(which)
    if split is None:
        return None
    if not isinstance(split, dict) or set(split) != {"annotations", "images"}:
        raise ConfigError([f"{config}: {which}: expected {{annotations: FILE, images: DIR}}, got {split!r}"])
    return DatasetSplit(annotations=str(split["annotations"]), images=str(split["images"]))


def default_backend(artifact: str) -> str:
    """``torch`` for a checkpoint directory, ``tensorrt`` for a saved engine directory, ``onnxruntime``
    for an ONNX graph or a quantisation output."""
    from ..bench.backends import load_artifact

    kind = load_artifact(artifact).kind
    return "torch" if kind in ("checkpoint", "model") else "tensorrt" if kind == "engine" else "onnxruntime"


def val_cmd(
    artifact: str = typer.Argument(..., help="Checkpoint directory, export directory / .onnx file, int8 output or engine directory."),
    data: Path = typer.Option(..., "--data",
                              help="Training config (kind: train) or data section YAML with a val split."),
    backend: str = typer.Option("auto", "--backend", help="torch | torch.compile | onnxruntime | onnxruntime-cuda | "
                                "tensorrt; auto: torch for a checkpoint, tensorrt for an engine, onnxruntime for a graph."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per batch."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=32,
                                             help="Letterbox size; default the artifact's export or config size."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (AP, AP50, …, per_class)."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Also write the confusion matrix (PNG)."),
) -> None:
    """Evaluate an artifact (checkpoint, ONNX, int8 ONNX) on the val split of a config: COCO mAP.

    Example: detflow val .detflow/runs/rtmdet-tiny-synth-…/best --data workflows/configs/rtmdet_tiny_synth.yaml --json
    """
    from ..bench.evaluate import evaluate_artifact
    from .evaluate import print_metrics

    split = val_split(data)
    chosen = default_backend(artifact) if backend == "auto" else backend
    metrics = evaluate_artifact(artifact, split, input_size=input_size, backend=chosen, batch_size=batch,
                                plot_confusion=confusion)
    if as_json:
        typer.echo(json.dumps({"artifact": artifact, "data": str(data), **metrics}, default=str))
        return
    print_metrics(metrics, title=f"bbox — {Path(artifact).name} on {Path(split.annotations).name} ({chosen})")
    if confusion is not None:
        typer.echo(f"confusion matrix: {confusion}")


def register(app: typer.Typer) -> None:
    app.command("val")(val_cmd)
