"""COCO evaluation (bbox / segm) on pycocotools' COCOeval, with readable errors and PR curves.

Example::

    from detflow.evaluation import evaluate_coco
    metrics = evaluate_coco("data/synth/val.json", "predictions.json", iou_type="bbox")
    metrics["AP"], metrics["per_class"]["circle"]

Metric values follow COCOeval's conventions: fractions in ``[0, 1]``, and ``-1.0`` where a metric
is undefined (e.g. ``APs`` when the ground truth has no small objects).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError

__all__ = ["evaluate_coco", "load_coco_gt", "METRIC_KEYS", "plot_pr_curves"]

# Order of COCOeval.stats for both bbox and segm.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def _quiet(verbose: bool):
    """Context that swallows pycocotools' prints unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco_gt(gt: Any, *, verbose: bool = False):
    """A pycocotools ``COCO`` from a path (or an existing ``COCO``); bad files raise UserInputError."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    data = _read_json(path, "ground truth")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        raise UserInputError(f"{path}: expected a COCO annotation file with 'images' and 'annotations' lists")
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: invalid JSON ({what}): {exc.msg} at line {exc.lineno}") from None


def _load_results(results: Any) -> tuple[list[dict], str]:
    """``(list of result dicts, name for messages)`` from a list or a JSON file path."""
    if isinstance(results, (str, Path)):
        data = _read_json(Path(results), "predictions")
        name = str(results)
    else:
        data, name = results, "predictions"
    if isinstance(data, dict) and "annotations" in data:  # a COCO-style file holding results
        data = data["annotations"]
    if not isinstance(data, list):
        raise UserInputError(f"{name}: expected a JSON list of COCO results, got {type(data).__name__}")
    return data, name


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _field_problem(det: dict, iou_type: str) -> str | None:
    """What is wrong with the values of one result's ``score`` / ``bbox``, or None. NaN is let through:
    a diverging model's predictions score low rather than stop the evaluation."""
    if not _is_number(det["score"]):
        return f"score {det['score']!r} is not a number"
    bbox = det.get("bbox") if iou_type == "bbox" else None  # segm ignores boxes (see _prepare)
    is_box = isinstance(bbox, (list, tuple, np.ndarray)) and len(bbox) == 4 and all(map(_is_number, bbox))
    if bbox is not None and not is_box:
        return f"bbox {bbox!r} is not [x, y, w, h] (4 numbers)"
    return None


def _check_results(dets: list[dict], name: str, iou_type: str, image_ids: set[int]) -> None:
    """One clear line naming the index and field of the first malformed or foreign result."""
    need = ("image_id", "category_id", "score", iou_type if iou_type == "bbox" else "segmentation")
    for i, det in enumerate(dets):
        if not isinstance(det, dict):
            raise UserInputError(f"{name}: prediction {i}: expected an object, got {type(det).__name__}")
        missing = [k for k in need if k not in det]
        if missing:
            raise UserInputError(f"{name}: prediction {i}: missing {', '.join(missing)} "
                                 f"(needed for iou_type={iou_type})")
        if det["image_id"] not in image_ids:
            raise UserInputError(f"{name}: prediction {i}: image_id {det['image_id']!r} is not in the ground truth")
        problem = _field_problem(det, iou_type)
        if problem:
            raise UserInputError(f"{name}: prediction {i}: {problem}")


def _prepare(dets: list[dict], iou_type: str) -> list[dict]:
    """Copies pycocotools can mutate; for segm drop ``bbox`` so loadRes uses the masks, not boxes."""
    drop = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: copy.copy(v) for k, v in d.items() if k != drop} for d in dets]


def evaluate_coco(gt: Any, results: Any, iou_type: str = "bbox", *, plot_pr: str | Path | None = None,
                  verbose: bool = False) -> dict:
    """Evaluate COCO results against ground truth with pycocotools.

    Args:
        gt: COCO annotation file path or a ``pycocotools.coco.COCO``.
        results: list of COCO result dicts (``image_id``, ``category_id``, ``score``, ``bbox`` xywh
            and/or RLE/polygon ``segmentation``) or a path to such a JSON file.
        iou_type: ``"bbox"`` or ``"segm"``.
        plot_pr: write a precision–recall plot (IoU 0.5 and 0.5:0.95, all classes) to this file.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl":
        float, "per_class": {class name: AP}, "num_predictions": int, "note": str}``. An empty
        prediction list gives zeros with ``note == "no predictions"``.
    """
    if iou_type not in IOU_TYPES:
        raise UserInputError(f"iou_type: expected one of {list(IOU_TYPES)}, got {iou_type!r}")
    coco_gt = load_coco_gt(gt, verbose=verbose)
    dets, name = _load_results(results)
    names = {c["id"]: str(c.get("name", c["id"])) for c in coco_gt.loadCats(coco_gt.getCatIds())}
    if not dets:
        out: dict[str, Any] = {k: 0.0 for k in METRIC_KEYS}
        out.update(per_class={n: 0.0 for n in names.values()}, num_predictions=0, note="no predictions")
        return out
    _check_results(dets, name, iou_type, set(coco_gt.getImgIds()))
    coco_eval = _run_cocoeval(coco_gt, _prepare(dets, iou_type), iou_type, verbose)
    out = {k: float(v) for k, v in zip(METRIC_KEYS, coco_eval.stats)}
    out["per_class"] = _per_class_ap(coco_eval, names)
    out["num_predictions"] = len(dets)
    out["note"] = _note(coco_gt, dets, names)
    if plot_pr is not None:
        plot_pr_curves(coco_eval.eval["precision"], plot_pr, title=f"{iou_type} precision-recall")
    return out


def _run_cocoeval(coco_gt, dets: list[dict], iou_type: str, verbose: bool):
    from pycocotools.cocoeval import COCOeval

    try:
        with _quiet(verbose):
            coco_dt = coco_gt.loadRes(dets)
            coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
    except (KeyError, TypeError, ValueError, AssertionError, IndexError) as exc:
        what = "segmentation masks/polygons" if iou_type == "segm" else "boxes"
        raise UserInputError(f"cannot evaluate {iou_type}: ground truth or predictions have malformed "
                             f"{what} ({type(exc).__name__}: {exc})") from None
    return coco_eval


def _per_class_ap(coco_eval, names: dict[int, str]) -> dict[str, float]:
    """AP@[.5:.95] per category (area all, 100 detections); -1.0 for a class without ground truth."""
    precision = coco_eval.eval["precision"]  # T×R×K×A×M
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        out[names.get(cat_id, str(cat_id))] = float(valid.mean()) if valid.size else -1.0
    return out


def _note(coco_gt, dets: list[dict], names: dict[int, str]) -> str:
    notes = []
    if not coco_gt.getAnnIds():
        notes.append("ground truth has no annotations")
    unknown = sum(1 for d in dets if d["category_id"] not in names)
    if unknown:
        notes.append(f"{unknown} predictions with unknown category ids were ignored")
    return "; ".join(notes)


def _mean_valid(p: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Mean over ``axis`` ignoring COCOeval's -1 (undefined) entries; -1 where nothing is defined."""
    mask = p > -1
    count = mask.sum(axis=axis)
    total = np.where(mask, p, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)


def plot_pr_curves(precision: np.ndarray, path: str | Path, *, title: str = "precision-recall") -> Path:
    """Plot class-averaged precision vs recall at IoU 0.5 and averaged over IoU 0.5:0.95.

    Args:
        precision: COCOeval's ``eval["precision"]``, ``T×R×K×A×M`` (IoU thresholds × 101 recall
            points × classes × area ranges × max-detection settings); area "all", 100 detections used.
        path: output image file (format from the suffix, e.g. ``.png``).
    """
    from matplotlib.figure import Figure

    p = precision[:, :, :, 0, -1]  # T×R×K
    recall = np.linspace(0.0, 1.0, p.shape[1])
    at50 = _mean_valid(p[0], axis=(1,))
    at5095 = _mean_valid(p, axis=(0, 2))
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    for curve, label in ((at50, "IoU 0.50"), (at5095, "IoU 0.50:0.95")):
        ax.plot(recall, np.clip(curve, 0, 1), label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
