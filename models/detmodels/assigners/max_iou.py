"""Max-IoU anchor matching (RetinaNet, Lin et al. 2017, §4 "Training"; the TF ArgMaxMatcher used by
SpineNet's RetinaNet: positive IoU ≥ 0.5, negative < 0.5, every GT force-matched to its best anchor).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..ops.boxes import pairwise_iou
from ..ops.precision import float32_guard

__all__ = ["MaxIoUAssigner", "MaxIoUAssignment", "NEGATIVE", "IGNORE"]

NEGATIVE = -1
IGNORE = -2


@dataclasses.dataclass
class MaxIoUAssignment:
    """Result for one image with ``A`` anchors.

    Attributes:
        gt_index: ``A`` long: matched GT index (≥ 0), ``NEGATIVE`` (−1) or ``IGNORE`` (−2).
        max_iou: ``A`` float: best IoU of each anchor with any GT (0 without GTs).
    """

    gt_index: Tensor
    max_iou: Tensor

    @property
    def positive(self) -> Tensor:
        return self.gt_index >= 0


class MaxIoUAssigner:
    """Assign each anchor to the GT of highest IoU.

    IoU ≥ ``pos_iou_thr`` → positive; IoU < ``neg_iou_thr`` → negative; in between → ignored.
    With ``force_match`` (TF ``force_match_for_each_row``), each GT additionally claims its
    highest-IoU anchor even below the threshold (the last GT wins a shared anchor, as the TF matcher).

    ``assign(anchors A×4, gt_boxes M×4)`` (xyxy, same pixels) → :class:`MaxIoUAssignment`, in float32 under autocast.
    The thresholds' rule (0 <= neg <= pos <= 1) lives in ``detmodels.MaxIoUOptions``.
    """

    def __init__(self, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.5, force_match: bool = True):
        self.pos_iou_thr, self.neg_iou_thr, self.force_match = pos_iou_thr, neg_iou_thr, force_match

    @torch.no_grad()
    @float32_guard
    def assign(self, anchors: Tensor, gt_boxes: Tensor) -> MaxIoUAssignment:
        num_anchors = anchors.shape[0]
        if gt_boxes.numel() == 0:
            return MaxIoUAssignment(
                torch.full((num_anchors,), NEGATIVE, dtype=torch.long, device=anchors.device),
                anchors.new_zeros(num_anchors))
        iou = pairwise_iou(gt_boxes.to(anchors.dtype), anchors)  # M×A
        max_iou, best_gt = iou.max(0)
        gt_index = torch.full_like(best_gt, IGNORE)
        gt_index[max_iou < self.neg_iou_thr] = NEGATIVE
        pos = max_iou >= self.pos_iou_thr
        gt_index[pos] = best_gt[pos]
        if self.force_match:
            best_anchor = iou.argmax(1)  # M
            gt_index[best_anchor] = torch.arange(gt_boxes.shape[0], device=anchors.device)
        return MaxIoUAssignment(gt_index, max_iou)
