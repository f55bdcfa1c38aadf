"""Validate a COCO annotation file against its image directory (``detflow data check``).

Each rule is a short function returning a one-line finding that names the record and the bad value
(``annotation 100: category_id 999 is not a category (known: 1, 2, 3, 4)``). The report keeps one
error line per class of problem with its count and the first findings, so it stays readable on
large files.

Example::

    report = check_coco("data/synth/train.json", "data/synth/images")
    print(report.format())
    report.raise_if_errors()      # DataError naming the file, as training does
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import DataError

__all__ = ["CheckReport", "check_coco", "non_finite_coordinates", "MAX_PIXELS"]

FIRST = 5  # findings listed per problem
KNOWN = 10  # known category ids listed in an unknown-category finding
BOX_TOLERANCE = 1.0  # px a box may exceed the image by (rounding in exported annotations)
MAX_PIXELS = 178_956_970  # Pillow's default Image.MAX_IMAGE_PIXELS (its decompression-bomb limit)
SHORT = 60  # characters of a value quoted in a finding

Findings = dict[str, list[str]]  # problem kind -> "record: what is wrong" lines


@dataclasses.dataclass
class CheckReport:
    """Outcome of :func:`check_coco`.

    Attributes:
        path: the annotation file checked.
        errors: one line per kind of error (count and the first findings).
        warnings: same for non-fatal findings (e.g. images without annotations).
        counts: ``images``, ``annotations``, ``categories``, ``crowd`` and one entry per problem kind.
    """

    path: str
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: ``FILE: N error(s): first | second …`` or ``FILE: ok``."""
        if not self.errors:
            images, anns = self.counts.get("images", 0), self.counts.get("annotations", 0)
            return f"{self.path}: ok ({images} images, {anns} annotations)"
        return f"{self.path}: {len(self.errors)} error(s): " + " | ".join(self.errors)

    def raise_if_errors(self) -> None:
        """Raise ``DataError`` with :meth:`summary` (one line) when there are errors."""
        if self.errors:
            raise DataError(self.summary() + f" (see `detflow data check {self.path} --images DIR`)")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "errors": self.errors, "warnings": self.warnings,
                "counts": self.counts}

    def format(self) -> str:
        """Multi-line human-readable report."""
        lines = [f"{self.path}: " + ", ".join(f"{v} {k}" for k, v in self.counts.items())]
        lines += [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        lines.append("ok" if self.ok else f"{len(self.errors)} error(s)")
        return "\n".join(lines)

    def _add(self, kind: str, what: str, findings: list[str], *, warning: bool = False) -> None:
        """Record ``len(findings)`` findings of one kind as ``N what: first; second; …``."""
        if not findings:
            return
        self.counts[kind] = len(findings)
        (self.warnings if warning else self.errors).append(f"{len(findings)} {what}: "
                                                           + _listing(findings, FIRST, "; "))

    def _add_all(self, found: Findings, whats: dict[str, str]) -> None:
        for kind, what in whats.items():
            self._add(kind, what, found.get(kind, []))


def _listing(values: list, limit: int, sep: str = ", ") -> str:
    return sep.join(str(v) for v in values[:limit]) + (f"{sep}…" if len(values) > limit else "")


def _short(value: Any) -> str:
    """``repr`` of a value, one line and at most SHORT characters."""
    text = repr(value)
    return text if len(text) <= SHORT else text[:SHORT - 1] + "…"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _load_json(path: Path, report: CheckReport) -> Any:
    if not path.is_file():
        report.errors.append("annotation file not found")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.errors.append(f"not valid JSON ({exc})")
        return None


def _check_structure(data: Any, report: CheckReport) -> bool:
    """Top-level COCO shape; False stops the check (nothing else can be trusted)."""
    if not isinstance(data, dict):
        report.errors.append(f"not a COCO file: expected a JSON object, got {type(data).__name__}")
        return False
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        report.errors.append(f"not a COCO file: expected lists {', '.join(repr(m) for m in missing)}")
        return False
    return True


def _field_problem(item: Any, fields: dict[str, type | tuple]) -> str | None:
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    for field, kind in fields.items():
        if field not in item:
            return f"missing {field}"
        value = item[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{field} {_short(value)} is not {getattr(kind, '__name__', kind)}"
    return None


def _records(items: list, fields: dict[str, type | tuple], kind: str, report: CheckReport) -> list[dict]:
    """Records with the required typed fields; the others are reported by list index."""
    good, bad = [], []
    for index, item in enumerate(items):
        problem = _field_problem(item, fields)
        if problem:
            bad.append(f"{kind} #{index}: {problem}")
        else:
            good.append(item)
    report._add(f"malformed_{kind}", f"malformed {kind} records, need {', '.join(fields)}", bad)
    return good


def _check_duplicates(records: list[dict], kind: str, report: CheckReport) -> None:
    counts = Counter(r["id"] for r in records)
    report._add(f"duplicate_{kind}_ids", f"duplicate {kind} ids",
                [f"{kind} {i}: id used by {n} records" for i, n in sorted(counts.items()) if n > 1])


def _check_file_names(images: list[dict], report: CheckReport) -> None:
    owners: dict[str, list[int]] = defaultdict(list)
    for img in images:
        owners[img["file_name"]].append(img["id"])
    report._add("duplicate_file_names", "duplicate file names",
                [f"images {_listing(ids, FIRST)}: file_name {_short(name)} is shared"
                 for name, ids in owners.items() if len(ids) > 1])


def _file_name_problem(name: str) -> str | None:
    """An absolute ``file_name`` or one with ``..`` would read outside the images directory."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        return f"file_name {_short(name)} is absolute, need a path relative to the images directory"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return f"file_name {_short(name)} contains '..', need a path inside the images directory"
    return None


def _pixels_problem(width: int, height: int, max_pixels: int) -> str | None:
    if width * height > max_pixels:
        return f"{width}x{height} = {width * height} pixels, above the limit of {max_pixels} (--max-pixels)"
    return None


def _image_record_problems(img: dict, max_pixels: int):
    """``(kind, finding)`` pairs of one image record, before its file is opened."""
    width, height = img["width"], img["height"]
    if width <= 0 or height <= 0:
        yield "non_positive_image_size", f"width x height {width}x{height} is not positive"
    elif problem := _pixels_problem(width, height, max_pixels):
        yield "too_many_pixels", f"width x height {problem}"
    if problem := _file_name_problem(img["file_name"]):
        yield "unsafe_file_name", problem


_IMAGE_PROBLEMS = {
    "non_positive_image_size": "images with a non-positive width or height",
    "unsafe_file_name": "images with a file_name outside the images directory",
    "too_many_pixels": "images above the pixel limit",
    "missing_images": "image files missing",
    "decompression_bombs": "decompression bombs",
    "undecodable_images": "undecodable image files",
    "image_size_mismatch": "images whose file size differs from width/height",
}


def _check_image_records(images: list[dict], max_pixels: int, found: Findings) -> set[int]:
    """Record-level image findings; returns the ids whose file must not be opened."""
    refused = set()
    for img in images:
        for kind, problem in _image_record_problems(img, max_pixels):
            found[kind].append(f"image {img['id']}: {problem}")
            refused.add(img["id"])
    return refused


def _image_file_problem(img: dict, images_dir: Path, shown_dir: str, max_pixels: int) -> tuple[str, str] | None:
    """``(kind, finding)`` for an image file that is missing, too large, a bomb, undecodable or resized."""
    from PIL import Image

    name = _short(img["file_name"])
    path = images_dir / img["file_name"]
    if not path.is_file():
        return "missing_images", f"file {name} not found under {shown_dir}"
    try:
        with Image.open(path) as handle:
            width, height = handle.size
            if problem := _pixels_problem(width, height, max_pixels):
                return "too_many_pixels", f"file {name} has {problem}"
            handle.load()
    except Image.DecompressionBombError as exc:
        return "decompression_bombs", f"file {name} is a decompression bomb ({_one_line(exc)})"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "undecodable"
        return "undecodable_images", f"{name} cannot be decoded ({_one_line(exc)})"
    if (width, height) != (img["width"], img["height"]):
        return "image_size_mismatch", f"file {name} is {width}x{height}, the record says {img['width']}x{img['height']}"
    return None


def _check_image_files(images: list[dict], images_dir: Path, shown_dir: str, max_pixels: int,
                       found: Findings) -> None:
    for img in images:
        problem = _image_file_problem(img, images_dir, shown_dir, max_pixels)
        if problem:
            found[problem[0]].append(f"image {img['id']}: {problem[1]}")


def _first_non_finite(values: Any) -> float | None:
    if not isinstance(values, list):
        return None
    return next((v for v in values if isinstance(v, float) and not math.isfinite(v)), None)


def non_finite_coordinates(ann: dict) -> str | None:
    """``"bbox [nan, 1, 2, 3] has a non-finite coordinate"`` (or the same for a segmentation polygon)
    when an annotation's box or polygons hold NaN / infinity (JSON ``NaN``, ``Infinity``); else None."""
    bbox = ann.get("bbox")
    if _first_non_finite(bbox) is not None:
        return f"bbox {_short(bbox)} has a non-finite coordinate"
    seg = ann.get("segmentation")
    for k, poly in enumerate(seg if isinstance(seg, list) else []):
        value = _first_non_finite(poly)
        if value is not None:
            return f"segmentation polygon {k} has a non-finite coordinate ({value})"
    return None


def _box_problem(bbox: Any, img: dict | None) -> tuple[str, str] | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return "malformed", f"bbox {_short(bbox)} is not [x, y, w, h]"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "non_positive", f"bbox {_short(bbox)} has a non-positive width or height"
    if img is not None and (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > img["width"] + BOX_TOLERANCE
                            or y + h > img["height"] + BOX_TOLERANCE):
        return "outside", f"bbox {_short(bbox)} is outside the {img['width']}x{img['height']} image {img['id']}"
    return None


def _rle_problem(seg: dict, img: dict | None) -> tuple[str, str] | None:
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and "counts" in seg):
        return "bad_rle", f"RLE segmentation needs counts and size [h, w], got keys {sorted(seg)}"
    if img is not None and size != [img["height"], img["width"]]:
        return "bad_rle", f"RLE size {_short(size)} is not the image's [{img['height']}, {img['width']}]"
    return None


def _polygon_problem(k: int, poly: list) -> tuple[str, str] | None:
    if not all(isinstance(v, (int, float)) for v in poly):
        return "bad_polygon", f"segmentation polygon {k} {_short(poly)} holds non-numbers"
    if len(poly) % 2:
        return "odd_polygon", f"segmentation polygon {k} has an odd number of coordinates ({len(poly)})"
    if len(poly) < 6:
        return "short_polygon", f"segmentation polygon {k} has {len(poly) // 2} points, need at least 3"
    return None


def _segmentation_problem(seg: Any, img: dict | None) -> tuple[str, str] | None:
    if seg is None or seg == []:
        return None
    if isinstance(seg, dict):
        return _rle_problem(seg, img)
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        return "bad_polygon", f"segmentation {_short(seg)} is neither polygons nor RLE"
    return next(filter(None, (_polygon_problem(k, poly) for k, poly in enumerate(seg))), None)


_ANN_PROBLEMS = {
    "malformed": "annotations with a malformed bbox, need [x, y, w, h]",
    "non_finite": "annotations with NaN or infinite coordinates",
    "non_positive": "boxes with non-positive width or height",
    "outside": "boxes outside the image",
    "unknown_category": "annotations with an unknown category_id",
    "unknown_image": "annotations with an unknown image_id",
    "bad_polygon": "segmentations that are neither polygons nor RLE",
    "odd_polygon": "polygons with an odd number of coordinates",
    "short_polygon": "polygons with fewer than 3 points",
    "bad_rle": "RLE segmentations without counts or with a size other than the image's",
}


def _annotation_problems(ann: dict, img: dict | None, cat_ids: set):
    """``(kind, finding)`` pairs of one annotation (``img``: its image record, None when unknown)."""
    if img is None:
        yield "unknown_image", f"image_id {ann['image_id']} has no image"
    if ann["category_id"] not in cat_ids:
        yield "unknown_category", (f"category_id {ann['category_id']} is not a category "
                                   f"(known: {_listing(sorted(cat_ids), KNOWN)})")
    if problem := non_finite_coordinates(ann):
        yield "non_finite", problem
        return  # comparisons with NaN say nothing about the geometry
    if img is not None and (img["width"] <= 0 or img["height"] <= 0):
        img = None  # reported on the image; no bounds to check against
    yield from filter(None, (_box_problem(ann.get("bbox"), img), _segmentation_problem(ann.get("segmentation"), img)))


def _check_annotations(anns: list[dict], images: dict[int, dict], cat_ids: set, report: CheckReport) -> None:
    found: Findings = defaultdict(list)
    for ann in anns:
        for kind, problem in _annotation_problems(ann, images.get(ann["image_id"]), cat_ids):
            found[kind].append(f"annotation {ann['id']}: {problem}")
    report._add_all(found, _ANN_PROBLEMS)


def _check_images(images: list[dict], images_dir: Path | None, shown_dir: str, max_pixels: int,
                  report: CheckReport) -> None:
    """Image records, then (``images_dir`` given) the files of the records that passed."""
    found: Findings = defaultdict(list)
    refused = _check_image_records(images, max_pixels, found)
    _check_file_names(images, report)
    if images_dir is not None and not images_dir.is_dir():
        report.errors.append(f"image directory {shown_dir} not found")
    elif images_dir is not None:
        _check_image_files([i for i in images if i["id"] not in refused], images_dir, shown_dir, max_pixels, found)
    report._add_all(found, _IMAGE_PROBLEMS)


def check_coco(annotations: str | Path, images_dir: str | Path | None, *, check_files: bool = True,
               max_pixels: int | None = None) -> CheckReport:
    """Validate ``annotations`` (COCO JSON); image files are opened and decoded under ``images_dir``.

    Errors (each finding names the record and the bad value): JSON that is not COCO, malformed
    records, duplicate ids or file names, images with a non-positive size, a ``file_name`` that is
    absolute or has ``..``, more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`), missing /
    undecodable files, decompression bombs or a file size different from the record, boxes
    malformed / non-positive / outside the image (> 1 px), NaN or infinite box or polygon
    coordinates, unknown category or image ids, polygons with an odd coordinate count or < 3 points,
    bad RLE. Warnings: images without annotations. Crowd annotations are counted, not rejected.
    """
    from ..artifact_store import local_path  # a stored dataset is checked through a local copy

    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    report = CheckReport(path=str(annotations))
    shown_dir = str(images_dir).rstrip("/") + "/"
    path, images_dir = local_path(annotations), local_path(images_dir)
    data = _load_json(path, report)
    if data is None or not _check_structure(data, report):
        return report
    images = _records(data["images"], {"id": int, "file_name": str, "width": int, "height": int}, "image", report)
    cats = _records(data["categories"], {"id": int, "name": str}, "category", report)
    anns = _records(data["annotations"], {"id": int, "image_id": int, "category_id": int}, "annotation", report)
    report.counts = {"images": len(data["images"]), "annotations": len(data["annotations"]),
                     "categories": len(data["categories"]),
                     "crowd": sum(1 for a in anns if a.get("iscrowd", 0)), **report.counts}
    if not cats:
        report.errors.append("no categories")
    for records, kind in ((images, "image"), (anns, "annotation"), (cats, "category")):
        _check_duplicates(records, kind, report)
    by_id = {img["id"]: img for img in images}
    _check_annotations(anns, by_id, {c["id"] for c in cats}, report)
    annotated = {a["image_id"] for a in anns}
    report._add("images_without_annotations", "images without annotations",
                [f"image {i}" for i in by_id if i not in annotated], warning=True)
    files_dir = Path(images_dir) if check_files and images_dir is not None else None
    _check_images(images, files_dir, shown_dir, max_pixels, report)
    return report
