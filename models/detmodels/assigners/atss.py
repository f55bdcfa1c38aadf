"""Adaptive Training Sample Selection (ATSS, Zhang et al. 2020, §3.1), YOLOv6's warm-up assigner
(YOLOv6, arXiv 2209.02976 "label assignment"): top-9 closest priors per level, IoU threshold mean + std.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..ops.precision import float32_guard

from .task_aligned import (
    BatchAssignment, _empty, batched_pairwise_iou, gather_targets, points_in_boxes, resolve_multiple_gts,
)

__all__ = ["ATSSAssigner"]


class ATSSAssigner:
    """Call with ``anchors`` ``A×4`` xyxy prior boxes (YOLOv6: 5·stride squares), ``level_sizes``
    (priors per level, summing to A), ``gt_labels`` ``B×M``, ``gt_boxes`` ``B×M×4``, ``gt_mask`` ``B×M``
    and optionally ``pd_boxes`` ``B×A×4``: the soft targets are then the IoU of the prediction with its GT.
    Returns :class:`~detmodels.assigners.task_aligned.BatchAssignment`. Computes in float32 under autocast.
    """

    def __init__(self, num_classes: int, topk: int = 9):
        self.num_classes, self.topk = num_classes, topk

    @torch.no_grad()
    @float32_guard
    def __call__(self, anchors: Tensor, level_sizes: Sequence[int], gt_labels: Tensor, gt_boxes: Tensor,
                 gt_mask: Tensor, pd_boxes: Tensor | None = None) -> BatchAssignment:
        b = gt_boxes.shape[0]
        if gt_boxes.shape[1] == 0:
            dummy = anchors.new_zeros((b, anchors.shape[0], self.num_classes))
            return _empty(self.num_classes, dummy, anchors.new_zeros((b, anchors.shape[0], 4)))
        overlaps = batched_pairwise_iou(gt_boxes, anchors[None].expand(b, -1, -1))  # B×M×A
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_centers = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        dist = (gt_centers[:, :, None] - centers[None, None]).pow(2).sum(-1).sqrt()
        candidates = self._candidates(dist, level_sizes)
        cand_iou = torch.where(candidates > 0, overlaps, torch.zeros_like(overlaps))
        picked = cand_iou.gather(-1, self._candidate_index(dist, level_sizes))
        thr = picked.mean(-1, keepdim=True) + picked.std(-1, keepdim=True)
        is_pos = torch.where(cand_iou > thr, candidates, torch.zeros_like(candidates))
        inside = points_in_boxes(centers, gt_boxes).to(is_pos.dtype)
        mask_pos = is_pos * inside * gt_mask[..., None].to(is_pos.dtype)
        gt_index, fg_mask, mask_pos = resolve_multiple_gts(mask_pos, overlaps)
        labels, boxes, scores = gather_targets(gt_labels, gt_boxes, gt_index, fg_mask, self.num_classes)
        if pd_boxes is not None:
            ious = (batched_pairwise_iou(gt_boxes, pd_boxes) * mask_pos).amax(1)
            scores = scores * ious[..., None]
        return BatchAssignment(labels, boxes, scores, fg_mask)

    def _candidate_index(self, dist: Tensor, level_sizes: Sequence[int]) -> Tensor:
        """``B×M×K``: indices of the ``topk`` closest priors of every level (K = Σ min(topk, n_l))."""
        out, start = [], 0
        for chunk, n in zip(dist.split(list(level_sizes), -1), level_sizes):
            out.append(chunk.topk(min(self.topk, n), dim=-1, largest=False).indices + start)
            start += n
        return torch.cat(out, -1)

    def _candidates(self, dist: Tensor, level_sizes: Sequence[int]) -> Tensor:
        mask = torch.zeros_like(dist)
        mask.scatter_(-1, self._candidate_index(dist, level_sizes), 1.0)
        return mask
