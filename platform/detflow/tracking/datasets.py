"""Datasets as MLflow dataset inputs of a run: what the UI's **Dataset** column and a run's
"Datasets used" panel show.

A split (an annotation file and its image folder) becomes an MLflow dataset entity with

- ``name``: ``<data folder>/<annotation file stem>`` (e.g. ``synth/train``),
- ``digest``: the annotation hash of :func:`~detflow.tracking.fingerprint.annotation_hash` (two runs
  on the same annotations show the same digest; an edited annotation file shows a new one),
- ``source``: the annotation path or URI (credentials redacted),
- ``profile``: ``{"images": N, "annotations": M, "classes": K}``,

logged with the context tag ``mlflow.data.context`` (``train``, ``val``, ``calibration`` …).

Example::

    from detflow import tracking
    run = tracking.Run.create("train-a", experiment="demo")
    tracking.log_datasets(run, {"train": ("data/train.json", "data/images"),
                                "val": ("data/val.json", "data/images")})
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..redact import redact_url, strip_credentials
from .fingerprint import annotation_hash, count_images
from .run import Run

__all__ = ["dataset_name", "dataset_profile", "dataset_entity", "log_datasets", "CONTEXT_TAG"]

CONTEXT_TAG = "mlflow.data.context"
_GENERIC_DIRS = {"annotations", "labels", "anns", "imagesets", "main", "data", "images"}


def _parts(location: str | Path) -> list[str]:
    text = str(location).split("://", 1)[-1].rstrip("/")
    return [p for p in text.split("/") if p]


def dataset_name(annotations: str | Path) -> str:
    """``<data folder>/<file stem>`` of an annotation file, skipping generic folder names:
    ``/x/synth/annotations/train.json`` → ``synth/train``."""
    parts = _parts(annotations)
    stem = Path(parts[-1]).stem if parts else "dataset"
    folders = [p for p in parts[:-1] if p.lower() not in _GENERIC_DIRS]
    return f"{folders[-1]}/{stem}" if folders else stem


def data_root_name(annotations: str | Path) -> str:
    """The data folder's name alone (``synth``), as a run description says it."""
    return dataset_name(annotations).split("/")[0]


def dataset_profile(annotations: str | Path, images: str | Path) -> dict[str, int]:
    """``{"images": N, "annotations": M, "classes": K}``: ``N`` counts image files under ``images``;
    ``M`` and ``K`` are read from a COCO JSON file (absent for other formats)."""
    from ..artifact_store import local_path

    profile = {"images": count_images(images)}
    try:
        coco = json.loads(local_path(annotations).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return profile
    if isinstance(coco, dict):
        for key, field in (("annotations", "annotations"), ("classes", "categories")):
            if isinstance(coco.get(field), list):
                profile[key] = len(coco[field])
    return profile


def _source(annotations: str | Path) -> tuple[str, str]:
    """``(source_type, source_json)`` the MLflow UI reads (``{"uri": ...}``)."""
    text = redact_url(strip_credentials(str(annotations)))
    scheme = text.split("://", 1)[0].lower() if "://" in text else "local"
    if scheme == "local":
        text = str(Path(text).resolve())
    return ("http" if scheme == "https" else scheme), json.dumps({"uri": text})


def dataset_entity(annotations: str | Path, images: str | Path, name: str | None = None) -> Any:
    """The ``mlflow.entities.Dataset`` of one split (see the module docstring)."""
    from mlflow.entities import Dataset

    source_type, source = _source(annotations)
    return Dataset(name=name or dataset_name(annotations), digest=annotation_hash(annotations),
                   source_type=source_type, source=source,
                   profile=json.dumps(dataset_profile(annotations, images)))


def _split_paths(split: Any) -> tuple[Any, Any]:
    if hasattr(split, "annotations") and hasattr(split, "images"):
        return split.annotations, split.images
    if isinstance(split, Mapping):
        return split["annotations"], split["images"]
    annotations, images = split
    return annotations, images


def log_datasets(run: Run, splits: Mapping[str, Any]) -> dict[str, str]:
    """Log each ``context -> split`` (a ``DatasetSplit``, a ``{"annotations", "images"}`` mapping or
    an ``(annotations, images)`` pair; ``None`` skipped) as a dataset input of ``run``, retried
    through an outage like every :class:`Run` call. Returns ``context -> digest``."""
    from mlflow.entities import DatasetInput, InputTag

    inputs, digests = [], {}
    for context, split in splits.items():
        if split is None:
            continue
        entity = dataset_entity(*_split_paths(split))
        inputs.append(DatasetInput(entity, tags=[InputTag(CONTEXT_TAG, context)]))
        digests[context] = entity.digest
    if inputs:
        _log_inputs(run, inputs)
    return digests


_RACE_ATTEMPTS = 3
_UNIQUE_VIOLATION = ("UNIQUE constraint failed", "duplicate key value violates unique constraint", "IntegrityError")


def _lost_insert_race(exc: BaseException) -> bool:
    """True for MLflow's answer when another run inserted the same dataset between its lookup and
    its insert (SQLite's or PostgreSQL's unique-key violation, directly or through a server)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and any(s in str(exc) for s in _UNIQUE_VIOLATION)


def _log_inputs(run: Run, inputs: list[Any]) -> None:
    """``log_inputs`` of ``inputs`` to ``run``. MLflow looks a dataset up by (experiment, name,
    digest) and inserts it when missing, so two runs logging a new dataset at once (the trials of a
    sweep) race on that key; the loser tries again and then finds it."""
    for attempt in range(_RACE_ATTEMPTS):
        try:
            run._call("log datasets", lambda: run.client.log_inputs(run.run_id, datasets=inputs))
            return
        except Exception as exc:  # noqa: BLE001 — only the insert race is retried here
            if attempt == _RACE_ATTEMPTS - 1 or not _lost_insert_race(exc):
                raise
