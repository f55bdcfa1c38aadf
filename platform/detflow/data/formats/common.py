"""What the YOLO and VOC readers share: the in-memory dataset, located errors, image sizes.

A reader (:mod:`.yolo`, :mod:`.voc`) returns a :class:`Dataset`: one category list and, per split,
COCO image and annotation records plus the source file of every image; :mod:`.convert` writes it.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import DataError

__all__ = ["Dataset", "Split", "WrittenSplit", "located", "image_size", "Progress", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""Image files the readers pick up (case-insensitive), as Ultralytics' ``IMG_FORMATS`` minus the rare ones."""

Progress = Callable[[int, int], None]
"""``progress(done, total)`` after each image read."""


@dataclasses.dataclass
class Split:
    """One split: COCO ``images`` (id, file_name, width, height) and ``annotations`` (id, image_id,
    category_id, bbox ``[x, y, w, h]`` pixels, area, iscrowd, optional segmentation polygons), and
    ``sources``: ``file_name`` → the image file it links to."""

    images: list[dict] = dataclasses.field(default_factory=list)
    annotations: list[dict] = dataclasses.field(default_factory=list)
    sources: dict[str, Path] = dataclasses.field(default_factory=dict)

    def add_image(self, file_name: str, source: Path, width: int, height: int) -> int:
        """Append an image record (ids 1, 2, …); returns its id."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        self.sources[file_name] = source
        return image_id

    def add_annotation(self, image_id: int, ann: dict) -> None:
        """Append ``ann`` (category_id, bbox, area, iscrowd, …) with the next id and ``image_id``."""
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, **ann})


@dataclasses.dataclass
class Dataset:
    """A converted dataset: class ``names`` (category ``k + 1`` is ``names[k]``) and its splits."""

    format: str
    names: list[str]
    splits: dict[str, Split]

    @property
    def categories(self) -> list[dict]:
        return [{"id": k + 1, "name": name, "supercategory": "none"} for k, name in enumerate(self.names)]


@dataclasses.dataclass(frozen=True)
class WrittenSplit:
    """One written split: its COCO file, the images directory and its counts."""

    name: str
    annotations: Path
    images: Path
    num_images: int
    num_annotations: int
    num_classes: int


def located(path: str | os.PathLike, line: int | None, what: str, value: Any) -> DataError:
    """``FILE:LINE: what (value)`` (``FILE: what (value)`` without a line) as a DataError."""
    where = f"{path}:{line}" if line else str(path)
    return DataError(f"{where}: {what} ({value})")


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (nothing decoded); DataError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise located(path, None, "cannot read the image", " ".join(str(exc).split())) from None
