"""``detflow export SOURCE --format onnx|int8|engine --out DIR``: a deployable model from a checkpoint.

The same library calls as the workflow steps: ``onnx`` is :func:`detflow.export.export_onnx` (the
``export`` step), ``int8`` is :func:`detflow.quant.run_ptq` (the ``ptq`` step), ``engine`` builds a
TensorRT engine (:func:`detflow.export.engine_artifact.build_engine_dir`) from one of those graphs:
fp16 from the fp32 graph; int8 (``--int8 qdq``, default) from the PTQ Q/DQ graph, or
(``--int8 entropy``) from the fp32 graph with TensorRT's entropy calibration on ``--calib``.
SOURCE is a checkpoint directory, a registered version (``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``) or a workflow step (``RUN_ID/STEP``).

``--out`` is a directory written whole or not at all (built in a temporary sibling, then renamed):
the step's files (``model.onnx`` + sidecar ``model.json``; ``model.int8.onnx`` + ``meta.json`` …;
``model.engine`` + its sidecar ``model.engine.json`` [+ ``calibration.cache``]) and ``export.json``,
which says what was exported from what. Every output is an artifact ``detflow val``, ``detflow
predict`` and the ``benchmark`` step take. ``--register NAME`` registers an engine directory as a
new version of NAME (:func:`detflow.predict.register.register_engine`). ``--keep-float K`` (int8) is
YOLOv6's partial PTQ: the K convs most sensitive to int8 stay float (ranked in ``sensitivity.json``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import typer

from .output import json_stdout

__all__ = ["register", "export_cmd", "parse_batch_profile", "parse_size", "FORMATS", "MANIFEST", "INT8_METHODS"]

FORMATS = ("onnx", "int8", "engine")
INT8_METHODS = ("qdq", "entropy")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
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


def parse_size(text: str, option: str = "--workspace") -> int:
    """``1073741824``, ``512M``/``512MiB``, ``2G``/``2GiB`` → bytes (at least 1 MiB)."""
    from ..errors import UserInputError

    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = m[2].lower() if m else ""
    if not m or unit not in _UNITS or int(m[1]) * _UNITS[unit] < (1 << 20):
        raise UserInputError(f"{option} {text!r}: expected a size of at least 1 MiB, e.g. 1G, 512M or bytes")
    return int(m[1]) * _UNITS[unit]


def _check_engine_options(fmt: str, precision: str, int8_method: str | None, register_as: str | None) -> str | None:
    """The int8 method of an int8 engine (``qdq`` by default), after refusing options other exports ignore."""
    from ..errors import UserInputError

    if int8_method is not None and int8_method not in INT8_METHODS:
        raise UserInputError(f"--int8 {int8_method!r}: expected one of {' | '.join(INT8_METHODS)}")
    if int8_method is not None and not (fmt == "engine" and precision == "int8"):
        raise UserInputError(f"--int8 {int8_method!r}: only with --format engine --precision int8")
    if register_as is not None and fmt != "engine":
        raise UserInputError(f"--register {register_as!r}: only with --format engine (workflows register the "
                             "other exports)")
    return (int8_method or "qdq") if fmt == "engine" and precision == "int8" else None


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
    calib_batches: int = typer.Option(4, "--calib-batches", min=1, help="Calibration batches (8 images each; "
                                       "--int8 entropy: of the --dynamic-batch OPT size, else 1)."),
    keep_float: int = typer.Option(0, "--keep-float", help="int8: partial PTQ (YOLOv6): keep the K convs most "
                                   "sensitive to int8 in float (ranked in sensitivity.json); 0 = plain PTQ."),
    dynamic_batch: Optional[str] = typer.Option(None, "--dynamic-batch", help="MIN,OPT,MAX: a symbolic batch axis "
                                                "(and the engine's profile); default a fixed batch of 1."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=32, help="Input size; default the "
                                             "checkpoint's data.image_size."),
    with_nms: bool = typer.Option(False, "--with-nms", help="onnx: also write model_nms.onnx (NMS in the graph)."),
    int8_method: Optional[str] = typer.Option(None, "--int8", help="Int8 engine: qdq (default; from the PTQ Q/DQ "
                                              "graph) | entropy (TensorRT entropy calibration of the fp32 graph)."),
    workspace: str = typer.Option("1G", "--workspace", help="Engine: TensorRT builder workspace (e.g. 512M, 2G)."),
    register_as: Optional[str] = typer.Option(None, "--register", help="Engine: register the engine directory "
                                              "as a new version of this model name (lineage to a models:/ SOURCE)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print export.json instead of a summary."),
    state_url: Optional[str] = typer.Option(None, "--state-url", help="State DB for RUN_ID/STEP (default "
                                            "$DETFLOW_STATE_URL or sqlite:///$DETFLOW_HOME/workflows.db)."),
) -> None:
    """Export a checkpoint to fp32 ONNX, int8 Q/DQ ONNX (PTQ) or a TensorRT engine, as the workflow steps do.

    Example: detflow export models:/coco_tiny@champion --format int8 --calib workflows/configs/rtmdet_tiny_synth.yaml --out out/int8

    Example: detflow export models:/coco_tiny@champion --format engine --precision int8 --int8 entropy --calib data/train.json --register coco_tiny --out out/trt
    """
    from ..errors import UserInputError

    chosen = _check_options(fmt, precision, calib, keep_float)
    method = _check_engine_options(fmt, chosen, int8_method, register_as)
    workspace_bytes = parse_size(workspace)
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
                           input_size=input_size, with_nms=with_nms, source=source, keep_float=keep_float,
                           engine={"int8_method": method, "workspace_bytes": workspace_bytes})
        if register_as is not None:
            from ..predict.register import register_engine

            manifest["registered"] = f"{register_as}/{register_engine(out, register_as, source=source)}"
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    typer.echo(f"{manifest['format']} ({manifest['precision']}) of {source} -> {out / manifest['file']}"
               + (f" (registered as {manifest['registered']})" if manifest.get("registered") else ""))


def _export(checkpoint: Path, fmt: str, precision: str, out: Path, *, split: Any, calib_batches: int,
            batch: tuple[int, int, int] | None, input_size: int | None, with_nms: bool, source: str,
            engine: dict | None = None, keep_float: int = 0) -> dict:
    """Write the export into a temporary sibling of ``out``, then rename it onto ``out``; the manifest.
    ``engine``: ``int8_method`` and ``workspace_bytes`` of an engine export."""
    from ..atomic import atomic_dir, atomic_write_json

    engine = engine or {}
    final = out.resolve()
    manifest: dict[str, Any] = {"format": fmt, "precision": precision, "source": source,
                                "checkpoint": str(checkpoint), "dynamic_batch": list(batch) if batch else None}
    with atomic_dir(final) as tmp:
        if fmt == "onnx" or (fmt == "engine" and (precision == "fp16" or engine.get("int8_method") == "entropy")):
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
            manifest.update(_engine(tmp, graph, size, precision, engine, batch=batch or (1, 1, 1),
                                    checkpoint=checkpoint, split=split, calib_batches=calib_batches))
        _relocate(tmp, final)
        atomic_write_json(tmp / MANIFEST, manifest, indent=2)
    return manifest


def _engine(folder: Path, graph: Path, size: list, precision: str, engine: dict, *, batch: tuple[int, int, int],
            checkpoint: Path, split: Any, calib_batches: int) -> dict[str, Any]:
    """Build and save the engine of ``graph`` in ``folder``; the manifest's engine fields."""
    from ..export.engine_artifact import ENGINE_FILE, SIDECAR_FILE, build_engine_dir

    method = engine.get("int8_method")
    calib, n = None, batch[1]  # entropy calibration runs at the profile's opt batch
    if method == "entropy":
        from ..export import resolve_model
        from ..quant.common import iter_batches, take

        batches = iter_batches(split, resolve_model(str(checkpoint)), int(size[0]), batch_size=n, shuffle=False)
        calib = [b[0] for b in take(batches, calib_batches) if b[0].shape[0] == n]  # TensorRT takes full batches
        if not calib:
            from ..errors import UserInputError

            raise UserInputError(f"--calib {split.annotations}: fewer than {n} images (one calibration batch of the "
                                 "--dynamic-batch OPT size)")
    info = build_engine_dir(folder, graph, precision=precision, input_size=size, batch=batch,
                            workspace_bytes=int(engine.get("workspace_bytes") or 1 << 30), int8_method=method,
                            calib=calib, calib_batch_size=n)
    return {"file": ENGINE_FILE, "sidecar": SIDECAR_FILE, "int8_method": method,
            "workspace_bytes": info["workspace_bytes"], "gpu": info["environment"].get("gpu_name"),
            "tensorrt": info["environment"].get("tensorrt")}


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
