"""Non-maximum suppression in torch, with the semantics of ``torchvision.ops.(batched_)nms``.

torchvision's compiled ops do not load with every torch build, so the torch version is the
reference; torchvision's kernel is used as a fast path only when it imports and runs.
"""
from __future__ import annotations

import functools

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


def _nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order]
    iou = pairwise_iou(boxes, boxes)
    n = boxes.shape[0]
    # suppressed[j] once any kept i < j overlaps it by more than the threshold
    over = (iou > iou_threshold).triu(diagonal=1)
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    over_cpu = over.cpu() if n > 64 else over
    keep_cpu = keep.cpu() if n > 64 else keep
    for i in range(n):
        if keep_cpu[i]:
            keep_cpu &= ~over_cpu[i]
    keep = keep_cpu.to(boxes.device)
    return order[keep]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (into ``boxes``) of the kept boxes, sorted by decreasing score.

    Args:
        boxes: ``N×4`` xyxy. scores: ``N``. iou_threshold: discard overlaps with IoU > threshold.
    """
    tv = _torchvision_nms()
    if tv is not None and not torch.jit.is_scripting():
        return tv(boxes.float(), scores.float(), float(iou_threshold))
    return _nms_torch(boxes.float(), scores.float(), float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes of different ``idxs`` never suppress each other.

    Uses the coordinate-offset trick (each class shifted to its own region), as torchvision does.
    Returns kept indices sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.long, device=boxes.device)
    max_coord = boxes.max()
    offsets = idxs.to(boxes) * (max_coord + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
