"""Dataset fingerprint: what a run was trained on, comparable across runs and machines."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DataError

__all__ = ["dataset_fingerprint", "annotation_hash", "count_images"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def count_images(images_dir: str | Path) -> int:
    """Image files (by suffix) under ``images_dir`` (a path or a stored location, listed without
    downloading), recursively; 0 when the directory is missing."""
    from ..artifact_store import is_uri, list_files

    if is_uri(images_dir):
        return sum(1 for name in list_files(images_dir) if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    root = Path(images_dir)
    if not root.is_dir():
        return 0
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def annotation_hash(annotations: str | Path) -> str:
    """The first 16 hex digits of the sha256 of the annotation file's bytes (a stored location is
    fetched first); one-line :class:`DataError` when it cannot be read."""
    from ..artifact_store import local_path

    path = local_path(annotations)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotations: {exc.strerror or exc}") from None
    return digest.hexdigest()[:16]


def dataset_fingerprint(annotations: str | Path, images_dir: str | Path) -> str:
    """``"sha256:<first 16 hex of the annotation file's sha256>:images=<N>"``.

    The hash covers the annotation file's bytes (:func:`annotation_hash`); ``N`` counts image files
    under ``images_dir``.
    """
    return f"sha256:{annotation_hash(annotations)}:images={count_images(images_dir)}"
