"""Writing a read dataset as COCO (:func:`write_coco`), and ``detflow data convert`` (:func:`convert_dataset`).

:func:`write_coco` writes
``OUT/<split>.json`` and ``OUT/images/<file_name>`` (symbolic links to the source images, or copies
with ``copy=True``) into a temporary directory beside ``OUT``, runs the checks of ``detflow data
check`` (:func:`detflow.data.check.check_coco`) on every split there, and only then renames it onto
``OUT``: bad input leaves nothing behind.

Example::

    from detflow.data.formats import read_yolo, write_coco
    written = write_coco(read_yolo("datasets/coco8/data.yaml"), "data/coco8")
    [(w.name, w.annotations, w.num_images) for w in written]
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ...errors import DataError, UserInputError
from .common import Dataset, Progress, Split, WrittenSplit
from .voc import read_voc
from .yolo import read_yolo

__all__ = ["write_coco", "convert_dataset", "FORMATS"]


def _coco(dataset: Dataset, split: Split) -> dict:
    return {"info": {"description": f"converted from {dataset.format} by detflow"}, "licenses": [],
            "images": split.images, "annotations": split.annotations, "categories": dataset.categories}


def _place_image(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(source, target)
    else:
        os.symlink(source.resolve(), target)  # absolute: the converted set may live anywhere


def _place_images(dataset: Dataset, images_dir: Path, copy: bool) -> None:
    """Every split's images under ``images_dir`` (a file shared by splits is placed once)."""
    placed: dict[str, Path] = {}
    for split in dataset.splits.values():
        for name, source in split.sources.items():
            if name in placed:
                if placed[name].resolve() != source.resolve():
                    raise DataError(f"{source}: file name {name!r} is also used by {placed[name]}")
                continue
            placed[name] = source
            _place_image(source, images_dir / name, copy)


def _check(json_path: Path, images_dir: Path, tmp: Path, out: Path) -> None:
    """``check_coco`` on a written split; errors name the final location, not the temporary one."""
    from ..check import check_coco

    report = check_coco(json_path, images_dir)
    if not report.ok:
        raise DataError(report.summary().replace(str(tmp), str(out)))


def write_coco(dataset: Dataset, out: str | os.PathLike, *, copy: bool = False) -> list[WrittenSplit]:
    """Write ``OUT/<split>.json`` per split and ``OUT/images/`` (links, or copies when ``copy``),
    atomically, after ``check_coco`` passed on every split (else DataError and nothing written).

    An existing ``OUT`` must be an empty directory (a non-empty one is refused: UserInputError).
    """
    from ...atomic import atomic_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"--out {out}: exists and is not an empty directory; choose a new one")
    if not dataset.splits:
        raise DataError(f"{dataset.format} dataset: no split with images found")
    written = []
    with atomic_dir(out) as tmp:
        _place_images(dataset, tmp / "images", copy)
        for name, split in dataset.splits.items():
            (tmp / f"{name}.json").write_text(json.dumps(_coco(dataset, split)))
            _check(tmp / f"{name}.json", tmp / "images", tmp, out)
            written.append(WrittenSplit(name, out / f"{name}.json", out / "images", len(split.images),
                                        len(split.annotations), len(dataset.names)))
    return written


FORMATS = ("yolo", "voc")


def convert_dataset(fmt: str, src: str | os.PathLike, out: str | os.PathLike, *, copy: bool = False,
                    classes: list[str] | None = None, progress: Progress | None = None) -> list[WrittenSplit]:
    """``detflow data convert``: read ``src`` as ``fmt`` (``yolo`` | ``voc``) and :func:`write_coco` it
    to ``out`` (one ``<split>.json`` per split, checked; nothing written on any error). ``classes``
    (VOC only) fixes the class list; an object of another class is then an error."""
    if fmt not in FORMATS:
        raise UserInputError(f"--from {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not Path(src).exists():
        raise UserInputError(f"{src}: dataset not found")
    if classes and fmt != "voc":
        raise UserInputError("--classes: only for --from voc (a YOLO dataset names its classes in data.yaml "
                             "or classes.txt)")
    dataset = read_yolo(src, progress=progress) if fmt == "yolo" else read_voc(src, classes=classes, progress=progress)
    return write_coco(dataset, out, copy=copy)
