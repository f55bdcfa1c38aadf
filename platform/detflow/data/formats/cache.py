"""Converted datasets cached by content: a training config naming a YOLO or VOC split is converted
to COCO once, into ``$DETFLOW_HOME/datasets/<key>/`` (``annotations.json`` + ``images/`` links).

The key is a SHA-256 over the format, the converter's version, the class source and every label /
XML file (absolute name and bytes), and every image (absolute name and size in bytes): editing a
label, adding an image or moving the dataset gives a new key, a second run on the same files finds
the converted copy. The directory appears whole (built beside, then renamed), so a directory that
exists is complete.

How a config names such a split (paths relative to the config file)::

    data:
      format: yolo                  # annotations: the data.yaml / classes.txt (or its folder),
      train: {annotations: coco8/data.yaml, images: coco8/images/train}   # images: the split's images
      val: {annotations: coco8/data.yaml, images: coco8/images/val}

    data:
      format: voc                   # annotations: an ImageSets/Main list (or the VOC root: every XML)
      train: {annotations: VOC2007/ImageSets/Main/trainval.txt, images: VOC2007/JPEGImages}
      val: {annotations: VOC2007/ImageSets/Main/test.txt, images: VOC2007/JPEGImages}

:func:`resolve_data_format` (called by ``detflow.train.resolve_train_config``) returns the
overlay that points both splits at the converted COCO files and sets ``data.format: coco``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ...errors import DataError, UserInputError
from .common import Dataset, Split
from .convert import write_coco
from .voc import read_voc
from .yolo import find_names_file, label_path, list_images, read_names, read_yolo_split

__all__ = ["CONVERTER_VERSION", "content_key", "cache_root", "CachedSplit", "cached_split", "resolve_data_format"]

CONVERTER_VERSION = 1  # bump when the converters' output changes: old cache entries are then not used
log = logging.getLogger(__name__)


def content_key(fmt: str, files: Iterable[Path], images: Iterable[Path], extra: object = None) -> str:
    """SHA-256 (hex) over ``fmt``, :data:`CONVERTER_VERSION`, ``extra`` (JSON), each of ``files``
    (absolute name + bytes) and each of ``images`` (absolute name + size in bytes)."""
    digest = hashlib.sha256(json.dumps([fmt, CONVERTER_VERSION, extra], sort_keys=True, default=str).encode())
    for path in sorted({os.path.abspath(p) for p in files}):
        data = Path(path).read_bytes()
        digest.update(b"F%s\0%d\0" % (path.encode(), len(data)) + data)
    for path in sorted({os.path.abspath(p) for p in images}):
        digest.update(b"I%s\0%d\0" % (path.encode(), os.stat(path).st_size))
    return digest.hexdigest()


def cache_root() -> Path:
    """``$DETFLOW_HOME/datasets``."""
    from ...paths import state_dir

    return state_dir() / "datasets"


@dataclasses.dataclass(frozen=True)
class CachedSplit:
    """A converted split: COCO ``annotations`` and ``images``; ``hit`` when it was already cached."""

    annotations: Path
    images: Path
    hit: bool


def _yolo_plan(annotations: Path, images: Path) -> tuple[str, Callable[[], Dataset]]:
    names_file = find_names_file(annotations)
    names = read_names(names_file)
    if not images.is_dir():
        raise DataError(f"{images}: data.format yolo: images must be the split's image folder")
    files = list_images(images)
    labels = [p for p in map(label_path, files) if p.is_file()]
    key = content_key("yolo", [names_file, *labels], files, {"names": names, "images": os.path.abspath(images)})
    return key, lambda: Dataset("yolo", names, {"annotations": read_yolo_split(files, names)})


def _voc_plan(annotations: Path, images: Path) -> tuple[str, Callable[[], Dataset]]:
    list_file = annotations if annotations.is_file() else None
    if list_file is not None and (annotations.parent.name, annotations.parent.parent.name) != ("Main", "ImageSets"):
        raise DataError(f"{annotations}: data.format voc: expected ROOT/ImageSets/Main/<split>.txt or the VOC root")
    root = annotations.parents[2] if list_file is not None else annotations
    xmls = sorted((root / "Annotations").glob("*.xml"))
    pictures = [p for p in images.iterdir() if p.is_file()] if images.is_dir() else []
    key = content_key("voc", [*xmls, *([list_file] if list_file else [])], pictures,
                      {"root": os.path.abspath(root), "images": os.path.abspath(images)})

    def build() -> Dataset:  # a list file: that split; the root: every XML
        dataset = read_voc(root, images_dir=images, list_file=list_file, use_lists=False)
        return Dataset("voc", dataset.names, {"annotations": next(iter(dataset.splits.values()), Split())})

    return key, build


def cached_split(fmt: str, annotations: str | os.PathLike, images: str | os.PathLike) -> CachedSplit:
    """The COCO form of one YOLO / VOC split (see the module docstring), converted and checked on
    first use, then read from the cache."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.exists():
        raise DataError(f"{annotations}: data.format {fmt}: annotations not found")
    key, build = (_yolo_plan if fmt == "yolo" else _voc_plan)(annotations, images)
    out = cache_root() / key
    if not out.is_dir():
        dataset = build()
        if not any(split.images for split in dataset.splits.values()):
            raise DataError(f"{images}: data.format {fmt}: no images found for {annotations}")
        try:
            written = write_coco(dataset, out)[0]
        except UserInputError:
            if not (out / "annotations.json").is_file():
                raise
            return CachedSplit(out / "annotations.json", out / "images", hit=True)  # another run converted it meanwhile
        log.info("converted %s dataset %s (%d images) to %s", fmt, annotations, written.num_images, out)
        return CachedSplit(written.annotations, written.images, hit=False)
    log.info("using the converted %s dataset %s", fmt, out)
    return CachedSplit(out / "annotations.json", out / "images", hit=True)


def resolve_data_format(fmt: str, paths: dict[str, str | None]) -> dict[str, str]:
    """Overlay for a training config whose ``data.format`` is ``fmt``: ``{}`` for ``coco``, else
    ``data.format: coco`` and each split's converted ``annotations`` / ``images``.

    ``paths``: ``data.<split>.annotations`` / ``data.<split>.images`` (absolute) for the splits present.
    """
    if fmt == "coco":
        return {}
    overlay = {"data.format": "coco"}
    for split in ("train", "val"):
        ann, img = paths.get(f"data.{split}.annotations"), paths.get(f"data.{split}.images")
        if ann is None or img is None:
            continue
        if "://" in ann or "://" in img:
            raise UserInputError(f"data.{split}: data.format {fmt} reads local files only, got {ann!r}")
        done = cached_split(fmt, ann, img)
        overlay.update({f"data.{split}.annotations": str(done.annotations), f"data.{split}.images": str(done.images)})
    return overlay
