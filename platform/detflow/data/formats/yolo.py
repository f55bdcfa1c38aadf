"""YOLO txt datasets (the Ultralytics layout) read into COCO records, and written from COCO.

Accepted layouts (``SRC`` of ``detflow data convert --from yolo``):

- an Ultralytics ``data.yaml`` (or a folder holding ``data.yaml`` / ``dataset.yaml``): ``path`` (the
  dataset root; relative to the YAML file's folder, default that folder), ``train`` / ``val`` /
  ``test`` (an image folder, a ``.txt`` list of images, or a list of these, relative to the root) and
  ``names`` (a list, or a mapping ``{0: person, 1: car}``; ``nc`` when given must match);
- a folder with ``classes.txt`` (one name per line) and ``images/<split>/…`` (or images directly in
  ``images/``: split ``all``).

Labels follow the Ultralytics convention: ``…/images/…/X.jpg`` has its labels in
``…/labels/…/X.txt`` (the last ``images`` folder of the path replaced), or in ``X.txt`` beside the
image when the path has no ``images`` folder. An image without a label file has no objects. Each
line is ``class cx cy w h`` (a box, normalised to [0, 1]) or ``class x1 y1 x2 y2 x3 y3 …`` (a polygon
of at least 3 normalised points, written as a COCO ``segmentation`` with its bounding box). Category
``k + 1`` is class index ``k``.

Every problem is a DataError ``FILE:LINE: what is wrong (value)``.

Example::

    dataset = read_yolo("datasets/coco8/data.yaml")            # detflow.data.formats.Dataset
    write_yolo({"train": ("train.json", "images")}, "yolo_out") # COCO -> YOLO
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ...errors import DataError
from .common import IMAGE_SUFFIXES, Dataset, Progress, Split, image_size, located

__all__ = ["read_yolo", "read_yolo_split", "read_names", "find_names_file", "list_images", "label_path",
           "parse_label_line", "write_yolo", "YAML_NAMES"]

YAML_NAMES = ("data.yaml", "dataset.yaml")
SPLITS = ("train", "val", "test")
BOX_FIELDS = 5


# --------------------------------------------------------------------------- classes and layout
def find_names_file(src: Path) -> Path:
    """The ``data.yaml`` / ``classes.txt`` that names the classes of ``src`` (that file or a folder)."""
    if src.is_file():
        return src
    for name in (*YAML_NAMES, "classes.txt"):
        if (src / name).is_file():
            return src / name
    raise DataError(f"{src}: no {', '.join(YAML_NAMES)} or classes.txt found (a YOLO dataset needs its class names)")


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise located(path, mark.line + 1 if mark else None, "invalid YAML",
                      getattr(exc, "problem", None) or "syntax error") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise located(path, None, "cannot read", exc) from None
    if not isinstance(data, dict):
        raise located(path, None, "expected a mapping with names, train and val", type(data).__name__)
    return data


def _names_from_yaml(path: Path, data: dict) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise located(path, None, "names: expected class indices 0..N-1 as keys", sorted(names, key=str))
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise located(path, None, "names: expected a non-empty list or mapping of class names", names)
    if "nc" in data and data["nc"] != len(names):
        raise located(path, None, f"nc does not match the {len(names)} names", data["nc"])
    return [str(n) for n in names]


def _names_from_txt(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise located(path, None, "expected one class name per line", "empty file")
    return names


def read_names(path: Path) -> list[str]:
    """Class names of a ``data.yaml`` (``names``) or a ``classes.txt`` (one per line)."""
    return _names_from_yaml(path, _load_yaml(path)) if path.suffix in (".yaml", ".yml") else _names_from_txt(path)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def label_path(image: Path) -> Path:
    """Ultralytics' ``img2label_paths``: the last ``images`` folder becomes ``labels``, suffix ``.txt``."""
    parts = image.parts
    if "images" in parts[:-1]:
        k = len(parts) - 2 - parts[:-1][::-1].index("images")
        return Path(*parts[:k], "labels", *parts[k + 1:]).with_suffix(".txt")
    return image.with_suffix(".txt")


def _entry_images(root: Path, entry: Any, yaml_path: Path, key: str) -> list[Path]:
    """Images of one ``train``/``val``/``test`` entry: a folder, a ``.txt`` list, or a list of these."""
    if isinstance(entry, list):
        return [img for e in entry for img in _entry_images(root, e, yaml_path, key)]
    if not isinstance(entry, str):
        raise located(yaml_path, None, f"{key}: expected an image folder or a .txt list", entry)
    path = root / entry
    if path.is_dir():
        return list_images(path)
    if path.is_file() and path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        return [(path.parent / ln).resolve() if not Path(ln).is_absolute() else Path(ln) for ln in lines]
    raise located(yaml_path, None, f"{key}: not an image folder or .txt list under {root}", entry)


def _dataset_root(yaml_path: Path, path: Any) -> Path:
    """``path`` of a data.yaml: relative to the YAML's folder, else (Ultralytics files often say
    ``../datasets/coco8``) to the working directory; absent, the YAML's folder."""
    if not path:
        return yaml_path.parent
    for root in (yaml_path.parent / str(path), Path.cwd() / str(path)):
        if root.is_dir():
            return root
    raise located(yaml_path, None, "path: dataset root not found (relative to this file or the working directory)",
                  path)


def _yaml_splits(yaml_path: Path) -> tuple[list[str], dict[str, list[Path]]]:
    data = _load_yaml(yaml_path)
    names = _names_from_yaml(yaml_path, data)
    root = _dataset_root(yaml_path, data.get("path"))
    splits = {key: _entry_images(root, data[key], yaml_path, key) for key in SPLITS if data.get(key)}
    return names, splits


def _folder_splits(names_file: Path) -> tuple[list[str], dict[str, list[Path]]]:
    images = names_file.parent / "images"
    if not images.is_dir():
        raise DataError(f"{names_file.parent}: no images/ folder beside {names_file.name}")
    splits = {d.name: list_images(d) for d in sorted(images.iterdir()) if d.is_dir()}
    direct = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if direct:
        splits["all"] = direct
    return _names_from_txt(names_file), {k: v for k, v in splits.items() if v}


# --------------------------------------------------------------------------- label files
def _number(path: Path, line: int, token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise located(path, line, f"{what} is not a number", token) from None
    if not math.isfinite(value):
        raise located(path, line, f"{what} is not finite", token)
    return value


def _class_index(path: Path, line: int, token: str, num_classes: int) -> int:
    value = _number(path, line, token, "class index")
    if not value.is_integer():
        raise located(path, line, "class index is not an integer", token)
    if not 0 <= value < num_classes:
        raise located(path, line, f"class index out of range 0..{num_classes - 1}", token)
    return int(value)


def _coordinates(path: Path, line: int, tokens: list[str]) -> list[float]:
    values = [_number(path, line, t, "coordinate") for t in tokens]
    for token, value in zip(tokens, values):
        if not 0.0 <= value <= 1.0:
            raise located(path, line, "coordinate outside [0, 1]", token)
    return values


def _box(path: Path, line: int, values: list[float], width: int, height: int) -> dict:
    cx, cy, w, h = values
    if w <= 0 or h <= 0:
        raise located(path, line, "box width and height must be positive", f"w={w:g} h={h:g}")
    x0, y0 = max(0.0, (cx - w / 2) * width), max(0.0, (cy - h / 2) * height)
    x1, y1 = min(float(width), (cx + w / 2) * width), min(float(height), (cy + h / 2) * height)
    bbox = [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]
    return {"bbox": bbox, "area": round(bbox[2] * bbox[3], 3)}


def _polygon(path: Path, line: int, values: list[float], width: int, height: int) -> dict:
    xs = [round(v * width, 3) for v in values[0::2]]
    ys = [round(v * height, 3) for v in values[1::2]]
    if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
        raise located(path, line, "polygon has no area", f"{len(xs)} points")
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
    flat = [c for xy in zip(xs, ys) for c in xy]
    bbox = [min(xs), min(ys), round(max(xs) - min(xs), 3), round(max(ys) - min(ys), 3)]
    return {"bbox": bbox, "area": round(area, 3), "segmentation": [flat]}


def parse_label_line(path: Path, line: int, text: str, num_classes: int, width: int, height: int) -> dict | None:
    """One label line as a COCO annotation (category_id, bbox, area, iscrowd[, segmentation]);
    None for a blank line. DataError ``FILE:LINE: what (value)`` on any problem."""
    tokens = text.split()
    if not tokens:
        return None
    if len(tokens) != BOX_FIELDS and (len(tokens) < 7 or len(tokens) % 2 == 0):
        raise located(path, line, "expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 …'",
                      f"{len(tokens)} fields")
    k = _class_index(path, line, tokens[0], num_classes)
    values = _coordinates(path, line, tokens[1:])
    shape = (_box if len(tokens) == BOX_FIELDS else _polygon)(path, line, values, width, height)
    return {"category_id": k + 1, "iscrowd": 0, **shape}


def _read_labels(image: Path, num_classes: int, width: int, height: int) -> list[dict]:
    path = label_path(image)
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise located(path, None, "cannot read the label file", exc) from None
    anns = (parse_label_line(path, n, text, num_classes, width, height) for n, text in enumerate(lines, 1))
    return [a for a in anns if a is not None]


# --------------------------------------------------------------------------- readers
def _relative_names(images: list[Path]) -> list[str]:
    """POSIX names of ``images`` relative to the deepest folder holding them all."""
    if not images:
        return []
    base = os.path.commonpath([os.path.abspath(p.parent) for p in images])
    return [Path(os.path.relpath(os.path.abspath(p), base)).as_posix() for p in images]


def read_yolo_split(images: list[Path], names: list[str], *, prefix: str = "",
                    progress: Progress | None = None) -> Split:
    """A :class:`Split` of ``images`` and their label files; ``file_name`` = ``prefix`` + the path
    relative to the images' common folder."""
    split = Split()
    unique = list(dict.fromkeys(images))
    for done, (image, rel) in enumerate(zip(unique, _relative_names(unique)), 1):
        if not image.is_file():
            raise located(image, None, "image listed by the dataset not found", image.name)
        width, height = image_size(image)
        image_id = split.add_image(prefix + rel, image, width, height)
        for ann in _read_labels(image, len(names), width, height):
            split.add_annotation(image_id, ann)
        if progress:
            progress(done, len(unique))
    return split


def read_yolo(src: str | os.PathLike, *, progress: Progress | None = None) -> Dataset:
    """Read a YOLO dataset (``data.yaml``, or a folder with ``data.yaml`` or ``classes.txt``); each
    split's file names are ``<split>/<path in the split's image folder>``."""
    names_file = find_names_file(Path(src))
    is_yaml = names_file.suffix in (".yaml", ".yml")
    names, images = _yaml_splits(names_file) if is_yaml else _folder_splits(names_file)
    splits = {key: read_yolo_split(imgs, names, prefix=f"{key}/", progress=progress) for key, imgs in images.items()}
    return Dataset("yolo", names, {k: v for k, v in splits.items() if v.images})


# --------------------------------------------------------------------------- writer (COCO -> YOLO)
def _yolo_line(ann: dict, index: int, width: int, height: int, segments: bool) -> str:
    seg = ann.get("segmentation")
    if segments and isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
        poly = max(seg, key=len)
        coords = [v / (width if i % 2 == 0 else height) for i, v in enumerate(poly)]
        return " ".join([str(index), *(f"{min(max(c, 0.0), 1.0):.6f}" for c in coords)])
    x, y, w, h = ann["bbox"]
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, width), min(y + h, height)
    values = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
    return " ".join([str(index), *(f"{v:.6f}" for v in values)])


def _write_yolo_split(split: str, annotations: Path, images_dir: Path, out: Path, segments: bool) -> list[str]:
    data = json.loads(Path(annotations).read_text())
    index = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):  # YOLO has no crowd regions
            by_image.setdefault(ann["image_id"], []).append(ann)
    for img in data["images"]:
        target = out / "images" / split / img["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((Path(images_dir) / img["file_name"]).resolve(), target)
        lines = [_yolo_line(a, index[a["category_id"]], img["width"], img["height"], segments)
                 for a in by_image.get(img["id"], [])]
        label = label_path(target)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def write_yolo(splits: dict[str, tuple[str | os.PathLike, str | os.PathLike]], out: str | os.PathLike, *,
               segments: bool = False) -> Path:
    """Write COCO splits ``{name: (annotations.json, images_dir)}`` as an Ultralytics dataset under
    ``out`` (``images/<split>/`` links, ``labels/<split>/*.txt``, ``data.yaml``); crowd annotations
    are dropped, ``segments`` writes polygon lines (the longest polygon) instead of boxes.
    Returns the ``data.yaml`` path. Used by the round-trip tests and to hand data to YOLO tools."""
    import yaml

    out = Path(out)
    names: list[str] = []
    for split, (coco_file, images_dir) in splits.items():
        names = _write_yolo_split(split, Path(coco_file), Path(images_dir), out, segments)
    spec = {"path": ".", **{s: f"images/{s}" for s in splits}, "names": dict(enumerate(names))}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / "data.yaml"
