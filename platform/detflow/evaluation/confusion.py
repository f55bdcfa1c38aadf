"""Detection confusion matrix (the YOLO-style one): which class each ground-truth box was detected as.

Rows are the true class (``C`` classes, then *background* = a detection that matched no box: a false
positive), columns the predicted class (``C`` classes, then *background* = a box no detection
matched: a miss). Matching is class-agnostic, per image: detections with ``score >= score_thr``
are paired with ground-truth boxes at ``IoU >= iou_thr``, highest IoU first, each box and each
detection used at most once; a pair adds one to ``[true class, predicted class]``. Crowd boxes
(``iscrowd=1``, VOC's ``difficult``) are ignored, and so are detections that overlap one.

Example::

    from detflow.evaluation.confusion import confusion_matrix, normalize_rows, plot_confusion_matrix
    m = confusion_matrix(coco_gt.dataset, results, category_ids=[1, 2, 3, 4])   # (C+1)×(C+1) counts
    plot_confusion_matrix(normalize_rows(m), ["circle", "square", …], "plots/confusion_matrix.png")
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UserInputError

__all__ = ["confusion_matrix", "normalize_rows", "plot_confusion_matrix", "box_iou_xywh", "write_confusion_plot"]


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of COCO boxes ``a`` (N×4, x y w h) against ``b`` (M×4): an N×M array."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _greedy_pairs(iou: np.ndarray, iou_thr: float) -> list[tuple[int, int]]:
    """(gt, det) pairs with IoU ≥ ``iou_thr``, highest IoU first, each index used once."""
    gi, di = np.nonzero(iou >= iou_thr)
    order = np.argsort(-iou[gi, di], kind="stable")
    used_g, used_d, pairs = set(), set(), []
    for g, d in zip(gi[order].tolist(), di[order].tolist()):
        if g not in used_g and d not in used_d:
            used_g.add(g), used_d.add(d)
            pairs.append((g, d))
    return pairs


def _by_image(items: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list] = defaultdict(list)
    for item in items:
        out[int(item["image_id"])].append(item)
    return out


def _index(category_ids: Sequence[int]) -> dict[int, int]:
    return {int(c): i for i, c in enumerate(category_ids)}


def _image_counts(m: np.ndarray, gts: list, dets: list, idx: dict[int, int], iou_thr: float) -> None:
    """Add one image's matches, misses and false positives to ``m`` (in place)."""
    bg = m.shape[0] - 1
    crowd = [g for g in gts if g.get("iscrowd", 0)]
    gts = [g for g in gts if not g.get("iscrowd", 0)]
    if crowd and dets:  # detections on a crowd/difficult region count neither way
        over = box_iou_xywh([d["bbox"] for d in dets], [c["bbox"] for c in crowd]).max(axis=1)
        dets = [d for d, o in zip(dets, over) if o < iou_thr]
    gbox = np.array([g["bbox"] for g in gts], np.float64).reshape(-1, 4)
    dbox = np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
    pairs = _greedy_pairs(box_iou_xywh(gbox, dbox), iou_thr)
    for g, d in pairs:
        m[idx[int(gts[g]["category_id"])], idx[int(dets[d]["category_id"])]] += 1
    matched_g, matched_d = {g for g, _ in pairs}, {d for _, d in pairs}
    for g, gt in enumerate(gts):
        if g not in matched_g:
            m[idx[int(gt["category_id"])], bg] += 1
    for d, det in enumerate(dets):
        if d not in matched_d:
            m[bg, idx[int(det["category_id"])]] += 1


def confusion_matrix(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], category_ids: Sequence[int], *,
                     iou_thr: float = 0.5, score_thr: float = 0.25) -> np.ndarray:
    """Counts of (true class, predicted class) over a COCO split.

    Args:
        gt: a COCO annotation dict (``images``, ``annotations``; a pycocotools ``COCO``'s ``.dataset``).
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox`` x y w h, ``score``).
        category_ids: the dataset's category ids; row/column ``i`` is ``category_ids[i]``.
        iou_thr / score_thr: the match threshold and the detections kept (YOLO's defaults: 0.5, 0.25).
    Returns:
        int64 array ``(C+1)×(C+1)``: rows true class + background, columns predicted class + background.
    """
    idx = _index(category_ids)
    for source, items in (("ground truth", gt.get("annotations", [])), ("results", results)):
        unknown = sorted({int(a["category_id"]) for a in items} - set(idx))
        if unknown:
            raise UserInputError(f"confusion matrix: {source}: category_id {unknown[0]} is not one of "
                                 f"the dataset's categories {list(idx)}")
    m = np.zeros((len(idx) + 1, len(idx) + 1), np.int64)
    gts = _by_image(gt.get("annotations", []))
    dets = _by_image([r for r in results if float(r.get("score", 1.0)) >= score_thr])
    for image_id in sorted(set(gts) | set(dets)):
        _image_counts(m, gts.get(image_id, []), dets.get(image_id, []), idx, iou_thr)
    return m


def normalize_rows(m: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (per true class: the fraction of its boxes predicted as each
    class or missed; the background row: how the false positives spread over classes); 0-rows stay 0."""
    m = np.asarray(m, np.float64)
    total = m.sum(axis=1, keepdims=True)
    return np.divide(m, total, out=np.zeros_like(m), where=total > 0)


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: str | Path, *,
                          title: str = "confusion matrix (IoU 0.5)") -> Path:
    """Heat map of a normalised ``(C+1)×(C+1)`` matrix with the class names (+ background) on the axes."""
    from matplotlib.figure import Figure

    labels = [*map(str, names), "background"]
    n = len(labels)
    size = min(max(4.0, 0.45 * n + 2.5), 16.0)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center")
    ax.set_yticks(range(n), labels)
    if n <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            if v > 0.005:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_confusion_plot(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], category_ids: Sequence[int],
                         path: str | Path, *, iou_thr: float = 0.5, score_thr: float = 0.25) -> np.ndarray:
    """:func:`confusion_matrix` → :func:`normalize_rows` → :func:`plot_confusion_matrix` at ``path``;
    returns the count matrix. Class names come from ``gt["categories"]``."""
    counts = confusion_matrix(gt, results, category_ids, iou_thr=iou_thr, score_thr=score_thr)
    names = {int(c["id"]): c.get("name", str(c["id"])) for c in gt.get("categories", [])}
    plot_confusion_matrix(normalize_rows(counts), [names.get(int(c), str(c)) for c in category_ids], path,
                          title=f"confusion matrix (IoU {iou_thr:g}, score ≥ {score_thr:g})")
    return counts
