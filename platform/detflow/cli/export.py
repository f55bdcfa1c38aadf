"""``detflow export SOURCE --format onnx|int8|engine --out DIR``: a deployable model from a checkpoint.

The same library calls as the workflow steps: ``onnx`` is :func:`detflow.export.export_onnx` (the
``export`` step), ``int8`` is :func:`detflow.quant.run_ptq` (the ``ptq`` step), ``engine`` builds a
TensorRT engine (:func:`detflow.export.tensorrt.build_engine`, as the benchmark's ``tensorrt``
backend does) from one of those graphs. SOURCE is a checkpoint directory, a registered version
(``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) or a workflow step (``RUN_ID/STEP``).

``--out`` is a directory written whole or not at all (built in a temporary sibling, then renamed):
the step's files (``model.onnx`` + sidecar ``model.json``; ``model.int8.onnx`` + ``meta.json`` …;
``model.engine``) and ``export.json``, which says what was exported from what. Every output is an
artifact ``detflow val`` and the ``benchmark`` step take. ``--keep-float K`` (int8) is YOLOv6's partial
PTQ: the K convs most sensitive to int8 stay float (ranked in ``sensitivity.json``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import typer

from .output import json_stdout

__all__ = ["register", "export_cmd", "parse_batch_profile", "FORMATS", "MANIFEST"]

FORMATS = ("onnx", "int8", "engine")
MANIFEST = "export.json"
_STEP_REF = re.compile(r"(?P<run>[A-Za-z0-9][A-Za-z0-9_.\-]*)/(?P<step>[A-Za-z0-9_\-]+)")


def parse_batch_profile(text: str | None) -> tuple[int, int, int] | None:
    """``MIN,OPT,MAX`` → ``(min, opt, max)`` with ``1 <= min <= opt <= max`` (None when not given)."""
    from ..errors import UserInputError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise UserInputError(f"--dynamic-batch {text!r}: expected MIN,OPT,MAX (three positive integers, e.g. 1,4,8)")
    lo, opt, hi = (int(p) for p in parts)
    if not 1 <= lo <= opt <= hi:
        raise UserInputError(f"--dynamic-batch {text!r}: expected 1 <= MIN <= OPT <= MAX, got {lo},{opt},{hi}")
    return lo, opt, hi


def _check_options(fmt: str, precision: str | None, calib: Path | None, keep_float: int = 0) -> str | None:
    """The precision of the export (``fp32`` | ``int8`` | ``fp16``), after refusing combinations that make no sense."""
    from ..errors import UserInputError

    if fmt not in FORMATS:
        raise UserInputError(f"--format {fmt!r}: expected one of {' | '.join(FORMATS)}")
    if precision is not None and precision not in ("fp16", "int8"):
        raise UserInputError(f"--precision {precision!r}: expected fp16 | int8")
    if fmt == "onnx" and precision is not None:
        raise UserInputError(f"--precision {precision!r}: --format onnx is fp32 (use --format int8 for an int8 "
                             "graph, --format engine for fp16/int8 engines)")
    if fmt == "int8" and precision not in (None, "int8"):
        raise UserInputError(f"--precision {precision!r}: --format int8 is int8")
    chosen = {"onnx": "fp32", "int8": "int8"}.get(fmt) or precision or "fp16"
    if chosen == "int8" and calib is None:
        raise UserInputError(f"--calib: required for an int8 export (--format {fmt}); give a training config, "
                             "a data section YAML or a COCO JSON of calibration images")
    if chosen != "int8" and calib is not None:
        raise UserInputError(f"--calib {str(calib)!r}: only an int8 export (--format int8, or --format engine "
                             "--precision int8) is calibrated")
    if keep_float < 0:
        raise UserInputError(f"--keep-float {keep_float}: expected >= 0 convs kept in float")
    if keep_float and chosen != "int8":
        raise UserInputError(f"--keep-float {keep_float}: only an int8 export (--format int8, or --format engine "
                             "--precision int8) keeps layers in float")
    return chosen


def calib_split(calib: Path, images: Path | None) -> Any:
    """The calibration ``DatasetSplit``: the train split of a training config / data section YAML, or
    a COCO JSON with its image folder (``--calib-images``; default ``images/`` beside the JSON, else
    the JSON's folder)."""
    from ..config.train import DatasetSplit
    from ..errors import UserInputError
    from .val import config_split

    if not calib.is_file():
        raise UserInputError(f"--calib {str(calib)!r}: no such file")
    if calib.suffix.lower() == ".json":
        folder = images if images is not None else (calib.parent / "images" if (calib.parent / "images").is_dir()
                                                   else calib.parent)
        if not folder.is_dir():
            raise UserInputError(f"--calib-images {str(folder)!r}: no such directory")
        return DatasetSplit(annotations=str(calib.resolve()), images=str(folder.resolve()))
    if images is not None:
        raise UserInputError(f"--calib-images {str(images)!r}: only used with a COCO JSON --calib")
    return config_split(calib, "train")


def resolve_source(source: str, state_url: str | None) -> Path:
    """The local checkpoint directory SOURCE names (see the module docstring)."""
    from .. import artifact_store
    from ..engine.checkpoint import is_checkpoint
    from ..errors import UserInputError

    if source.startswith("models:/"):
        from ..weights.resolve import registered_checkpoint

        return registered_checkpoint(source)
    path = Path(source).expanduser()
    if path.exists():
        if not is_checkpoint(path):
            raise UserInputError(f"SOURCE {source!r}: not a detflow checkpoint directory (expected model.pt, "
                                 "config.yaml, meta.json)")
        return path.resolve()
    ref = _STEP_REF.fullmatch(source)
    if ref is None:
        raise UserInputError(f"SOURCE {source!r}: no such checkpoint directory (expected a checkpoint directory, "
                             "models:/NAME@ALIAS, models:/NAME/VERSION or RUN_ID/STEP)")
    from .. import sdk

    try:
        location = sdk.step_output(ref["run"], ref["step"], "checkpoint", state_url=state_url)
    except UserInputError as exc:
        raise UserInputError(f"SOURCE {source!r}: no such checkpoint directory, nor a workflow step ({exc})") from None
    local = artifact_store.materialize(location)
    if not is_checkpoint(local):
        raise UserInputError(f"SOURCE {source!r}: the step's checkpoint {location} is not a detflow checkpoint directory")
    return local


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds anything but (with ``--overwrite``) an earlier export."""
    from ..errors import UserInputError

    if not out.exists():
        return
    if not out.is_dir():
        raise UserInputError(f"--out {str(out)!r}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserInputError(f"--out {str(out)!r}: exists and is not empty (add --overwrite to replace an "
                             "earlier export)")
    if not (out / MANIFEST).is_file():
        raise UserInputError(f"--out {str(out)!r}: --overwrite replaces only an earlier `detflow export` "
                             f"output (a directory with {MANIFEST}); this one has none")


def _relocate(tmp: Path, final: Path) -> None:
    """Rewrite the temporary directory's path to the final one in the JSON files written inside it."""
    old, new = str(tmp), str(final)
    for path in tmp.rglob("*.json"):
        text = path.read_text()
        if old in text:
            path.write_text(text.replace(old, new))


def export_cmd(
    source: str = typer.Argument(..., help="Checkpoint directory, models:/NAME@ALIAS, models:/NAME/VERSION, "
                                 "or RUN_ID/STEP (a workflow step's checkpoint)."),
    fmt: str = typer.Option(..., "--format", help="onnx (fp32) | int8 (PTQ, Q/DQ ONNX) | engine (TensorRT).",
                            show_default=False),
    out: Path = typer.Option(..., "--out", help="Output directory (written whole or not at all).",
                             show_default=False),
    precision: Optional[str] = typer.Option(None, "--precision", help="Engine precision: fp16 (default) | int8 "
                                            "(int8 calibrates with --calib first)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images for int8: a training config, "
                                         "a data section YAML (its train split) or a COCO JSON."),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", help="Image folder of a COCO JSON "
                                                "--calib (default images/ beside it, else its folder)."),
    calib_batches: int = typer.Option(4, "--calib-batches", min=1, help="Calibration batches (8 images each)."),
    keep_float: int = typer.Option(0, "--keep-float", help="int8: partial PTQ (YOLOv6): keep the K convs most "
                                   "sensitive to int8 in float (ranked in sensitivity.json); 0 = plain PTQ."),
    dynamic_batch: Optional[str] = typer.Option(None, "--dynamic-batch", help="MIN,OPT,MAX: a symbolic batch axis "
                                                "(and the engine's profile); default a fixed batch of 1."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=32, help="Input size; default the "
                                             "checkpoint's data.image_size."),
    with_nms: bool = typer.Option(False, "--with-nms", help="onnx: also write model_nms.onnx (NMS in the graph)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print export.json instead of a summary."),
    state_url: Optional[str] = typer.Option(None, "--state-url", help="State DB for RUN_ID/STEP (default "
                                            "$DETFLOW_STATE_URL or sqlite:///$DETFLOW_HOME/workflows.db)."),
) -> None:
    """Export a checkpoint to fp32 ONNX, int8 Q/DQ ONNX (PTQ) or a TensorRT engine, as the workflow steps do.

    Example: detflow export models:/coco_tiny@champion --format int8 --calib workflows/configs/rtmdet_tiny_synth.yaml --out out/int8
    """
    from ..errors import UserInputError

    chosen = _check_options(fmt, precision, calib, keep_float)
    batch = parse_batch_profile(dynamic_batch)
    if with_nms and fmt != "onnx":
        raise UserInputError(f"--with-nms: only with --format onnx, got --format {fmt}")
    split = calib_split(calib, calib_images) if calib is not None else None
    if fmt == "engine":
        from ..export.tensorrt import tensorrt_status

        why = tensorrt_status()
        if why is not None:
            raise UserInputError(f"--format engine: {why}; export --format onnx or int8 and build the engine "
                                 "where TensorRT is installed")
    _check_out(out, overwrite)
    checkpoint = resolve_source(source, state_url)
    with json_stdout(as_json):
        manifest = _export(checkpoint, fmt, chosen, out, split=split, calib_batches=calib_batches, batch=batch,
                           input_size=input_size, with_nms=with_nms, source=source, keep_float=keep_float)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    typer.echo(f"{manifest['format']} ({manifest['precision']}) of {source} -> {out / manifest['file']}")


def _export(checkpoint: Path, fmt: str, precision: str, out: Path, *, split: Any, calib_batches: int,
            batch: tuple[int, int, int] | None, input_size: int | None, with_nms: bool, source: str,
            keep_float: int = 0) -> dict:
    """Write the export into a temporary sibling of ``out``, then rename it onto ``out``; the manifest."""
    from ..atomic import atomic_dir, atomic_write_json

    final = out.resolve()
    manifest: dict[str, Any] = {"format": fmt, "precision": precision, "source": source,
                                "checkpoint": str(checkpoint), "dynamic_batch": list(batch) if batch else None}
    with atomic_dir(final) as tmp:
        if fmt == "onnx" or (fmt == "engine" and precision == "fp16"):
            from ..export import export_onnx

            result = export_onnx(str(checkpoint), tmp, input_size=input_size, dynamic_batch=batch is not None,
                                 with_nms=with_nms)
            graph, size = Path(result.onnx_path), list(result.input_size)
            manifest.update(exporter=result.exporter, max_abs_diff=float(result.max_abs_diff))
        else:
            from ..quant import run_ptq

            result = run_ptq(str(checkpoint), tmp, calib_batches=calib_batches, data=split, image_size=input_size,
                             keep_float=keep_float)
            graph = Path(result.onnx_path)
            size = list(json.loads(graph.with_suffix(".json").read_text()).get("input_size") or [])
            metrics = result.metrics
            manifest.update(quant_path=metrics.get("quant_path"), calib_images=metrics.get("calib_images"),
                            calib={"annotations": split.annotations, "images": split.images},
                            ort_vs_torch_max_abs_diff=metrics.get("ort_vs_torch_max_abs_diff"),
                            keep_float=keep_float, kept_float=metrics.get("kept_float", []))
        manifest.update(input_size=size, onnx=graph.name, file=graph.name)
        if fmt == "engine":
            from ..export.tensorrt import build_engine

            blob = build_engine(graph, precision=precision, input_size=size, batch=batch or (1, 1, 1))
            (tmp / "model.engine").write_bytes(blob)
            manifest["file"] = "model.engine"
        _relocate(tmp, final)
        atomic_write_json(tmp / MANIFEST, manifest, indent=2)
    return manifest


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
