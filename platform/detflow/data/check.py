"""Validate a COCO annotation file against its image directory (``detflow data check``).

Each rule is a short function adding findings to a :class:`CheckReport`: one error line per class
of problem with its count and the first offending ids, so a report stays readable on large files.

Example::

    report = check_coco("data/synth/train.json", "data/synth/images")
    print(report.format())
    report.raise_if_errors()      # DataError naming the file, as training does
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["CheckReport", "check_coco"]

FIRST = 5  # offenders listed per problem
BOX_TOLERANCE = 1.0  # px a box may exceed the image by (rounding in exported annotations)


@dataclasses.dataclass
class CheckReport:
    """Outcome of :func:`check_coco`.

    Attributes:
        path: the annotation file checked.
        errors: one line per kind of error (count and first offenders by id).
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
        """One line: ``FILE: N error(s): first; second …`` or ``FILE: ok``."""
        if not self.errors:
            images, anns = self.counts.get("images", 0), self.counts.get("annotations", 0)
            return f"{self.path}: ok ({images} images, {anns} annotations)"
        return f"{self.path}: {len(self.errors)} error(s): " + "; ".join(self.errors)

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

    def _add(self, kind: str, what: str, ids: list[Any], *, label: str = "annotation ids",
             warning: bool = False) -> None:
        """Record ``len(ids)`` findings of one kind as ``N what (label first, ids, …)``."""
        if not ids:
            return
        self.counts[kind] = len(ids)
        shown = ", ".join(str(i) for i in ids[:FIRST]) + (", …" if len(ids) > FIRST else "")
        (self.warnings if warning else self.errors).append(f"{len(ids)} {what} ({label} {shown})")


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


def _records(items: list, fields: dict[str, type | tuple], kind: str, report: CheckReport) -> list[dict]:
    """Records with the required typed fields; the others are reported by index."""
    good, bad = [], []
    for index, item in enumerate(items):
        if isinstance(item, dict) and all(isinstance(item.get(f), t) and not isinstance(item.get(f), bool)
                                          for f, t in fields.items()):
            good.append(item)
        else:
            bad.append(f"#{index}")
    report._add(f"malformed_{kind}", f"malformed {kind} records, need {', '.join(fields)}", bad,
                label="list index")
    return good


def _check_duplicates(records: list[dict], kind: str, report: CheckReport) -> None:
    counts = Counter(r["id"] for r in records)
    report._add(f"duplicate_{kind}_ids", f"duplicate {kind} ids", sorted(i for i, n in counts.items() if n > 1),
                label="ids")


def _check_images(images: list[dict], images_dir: Path, report: CheckReport) -> None:
    from PIL import Image

    if not images_dir.is_dir():
        report.errors.append(f"image directory {images_dir} not found")
        return
    missing, broken, wrong_size = [], [], []
    for img in images:
        path = images_dir / img["file_name"]
        if not path.is_file():
            missing.append(img["id"])
            continue
        try:
            with Image.open(path) as handle:
                handle.load()
                size = handle.size
        except Exception:  # noqa: BLE001 - any decoder failure means "undecodable"
            broken.append(img["id"])
            continue
        if size != (img["width"], img["height"]):
            wrong_size.append(img["id"])
    report._add("missing_images", f"image files missing under {images_dir}", missing, label="image ids")
    report._add("undecodable_images", "undecodable image files", broken, label="image ids")
    report._add("image_size_mismatch", "images whose file size differs from width/height", wrong_size,
                label="image ids")


def _box_problem(bbox: Any, img: dict | None) -> str | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return "malformed"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "non_positive"
    if img is not None and (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > img["width"] + BOX_TOLERANCE
                            or y + h > img["height"] + BOX_TOLERANCE):
        return "outside"
    return None


def _segmentation_problem(seg: Any, img: dict | None) -> str | None:
    if seg is None or seg == []:
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2 and "counts" in seg):
            return "bad_rle"
        if img is not None and size != [img["height"], img["width"]]:
            return "bad_rle"
        return None
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        return "bad_polygon"
    for poly in seg:
        if not all(isinstance(v, (int, float)) for v in poly):
            return "bad_polygon"
        if len(poly) % 2:
            return "odd_polygon"
        if len(poly) < 6:
            return "short_polygon"
    return None


_ANN_PROBLEMS = {
    "malformed": "annotations with a malformed bbox, need [x, y, w, h]",
    "non_positive": "boxes with non-positive width or height",
    "outside": "boxes outside the image",
    "unknown_category": "annotations with an unknown category_id",
    "unknown_image": "annotations with an unknown image_id",
    "bad_polygon": "segmentations that are neither polygons nor RLE",
    "odd_polygon": "polygons with an odd number of coordinates",
    "short_polygon": "polygons with fewer than 3 points",
    "bad_rle": "RLE segmentations without counts or with a size other than the image's",
}


def _check_annotations(anns: list[dict], images: dict[int, dict], cat_ids: set, report: CheckReport) -> None:
    found: dict[str, list] = defaultdict(list)
    for ann in anns:
        img = images.get(ann["image_id"])
        if img is None:
            found["unknown_image"].append(ann["id"])
        if ann["category_id"] not in cat_ids:
            found["unknown_category"].append(ann["id"])
        for problem in (_box_problem(ann.get("bbox"), img), _segmentation_problem(ann.get("segmentation"), img)):
            if problem:
                found[problem].append(ann["id"])
    for kind, what in _ANN_PROBLEMS.items():
        report._add(kind, what, found.get(kind, []))


def check_coco(annotations: str | Path, images_dir: str | Path | None, *, check_files: bool = True) -> CheckReport:
    """Validate ``annotations`` (COCO JSON); image files are opened and decoded under ``images_dir``.

    Errors: JSON that is not COCO, malformed records, duplicate ids, missing / undecodable images or
    a file size different from the record, boxes malformed / non-positive / outside the image
    (> 1 px), unknown category or image ids, polygons with an odd coordinate count or < 3 points,
    bad RLE. Warnings: images without annotations. Crowd annotations are counted, not rejected.
    """
    from ..artifact_store import local_path  # a stored dataset is checked through a local copy

    report = CheckReport(path=str(annotations))
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
                [i for i in by_id if i not in annotated], label="image ids", warning=True)
    if check_files and images_dir is not None:
        _check_images(images, Path(images_dir), report)
    return report
