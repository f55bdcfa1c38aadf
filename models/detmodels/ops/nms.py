"""Non-maximum suppression in torch, with the semantics of ``torchvision.ops.(batched_)nms``.

torchvision's compiled ops do not load with every torch build, so the torch version is the
reference; torchvision's kernel is used as a fast path only when it imports and runs.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from .boxes import pairwise_iou

__all__ = ["nms", "batched_nms"]


@functools.lru_cache(maxsize=1)
def _torchvision_nms():
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms as tv_nms

        tv_nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)  # the compiled op must really be there
        return tv_nms
    except Exception:  # pragma: no cover - depends on the environment
        return None


def _nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None,
               block: int = 256) -> Tensor:
    """Greedy NMS over score-sorted blocks of ``block`` boxes: each block is first checked against
    the boxes kept so far, then resolved greedily inside itself. Memory is ``O(block² + block·kept)``
    instead of ``O(N²)``, and the scan stops once ``max_keep`` boxes are kept (the first ``max_keep``
    of greedy NMS do not depend on the boxes after them)."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros((0,), dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order]
    limit = n if max_keep is None else max_keep
    kept: list[Tensor] = []
    kept_boxes = boxes[:0]
    for start in range(0, n, block):
        chunk = boxes[start : start + block]
        alive = (pairwise_iou(chunk, kept_boxes) <= iou_threshold).all(1) if len(kept_boxes) else \
            torch.ones(len(chunk), dtype=torch.bool, device=boxes.device)
        alive = _greedy_within(alive.cpu().numpy(), (pairwise_iou(chunk, chunk) > iou_threshold).cpu().numpy())
        idx = torch.from_numpy(alive).nonzero().squeeze(1).to(boxes.device)
        kept.append(idx + start)
        kept_boxes = torch.cat([kept_boxes, chunk[idx]])
        if len(kept_boxes) >= limit:
            break
    return order[torch.cat(kept)[:limit]]


def _greedy_within(alive: np.ndarray, over: np.ndarray) -> np.ndarray:
    """Greedy suppression inside one score-sorted block: ``over[i, j]`` = box i suppresses box j."""
    over = np.triu(over, 1)
    for i in range(len(alive)):
        if alive[i]:
            alive &= ~over[i]
    return alive


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Indices (into ``boxes``) of the kept boxes, sorted by decreasing score.

    Args:
        boxes: ``N×4`` xyxy. scores: ``N``. iou_threshold: discard overlaps with IoU > threshold.
        max_keep: return only the ``max_keep`` best kept boxes (the scan stops there).
    """
    tv = _torchvision_nms()
    if tv is not None and not torch.jit.is_scripting():
        return tv(boxes.float(), scores.float(), float(iou_threshold))[:max_keep]
    return _nms_torch(boxes.float(), scores.float(), float(iou_threshold), max_keep)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                max_keep: int | None = None) -> Tensor:
    """Class-aware NMS: boxes of different ``idxs`` never suppress each other.

    Uses the coordinate-offset trick (each class shifted to its own region), as torchvision does.
    Returns kept indices sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.long, device=boxes.device)
    max_coord = boxes.max()
    offsets = idxs.to(boxes) * (max_coord + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold, max_keep)
