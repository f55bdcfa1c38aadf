"""Task-aligned assignment (TOOD, Feng et al. 2021, §3.2) as YOLOv6 uses it (arXiv 2209.02976):
top-13, α = 1, β = 6, batched over padded ground truth.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.precision import float32_guard

__all__ = ["TaskAlignedAssigner", "BatchAssignment", "points_in_boxes", "batched_pairwise_iou",
           "resolve_multiple_gts", "gather_targets"]


@dataclasses.dataclass
class BatchAssignment:
    """Targets of ``A`` priors in ``B`` images.

    Attributes:
        labels: ``B×A`` long, class index of the matched GT (``num_classes`` for background).
        boxes: ``B×A×4`` xyxy of the matched GT (input pixels; arbitrary for background).
        scores: ``B×A×C`` soft class targets (0 for background).
        fg_mask: ``B×A`` bool, positives.
    """

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    fg_mask: Tensor


@float32_guard
def batched_pairwise_iou(gt: Tensor, pred: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of ``B×M×4`` with ``B×A×4`` (xyxy) → ``B×M×A``."""
    g, p = gt[:, :, None], pred[:, None]
    inter = (torch.minimum(g[..., 2:], p[..., 2:]) - torch.maximum(g[..., :2], p[..., :2])).clamp(min=0).prod(-1)
    area_g = (g[..., 2:] - g[..., :2]).clamp(min=0).prod(-1)
    area_p = (p[..., 2:] - p[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_g + area_p - inter + eps)


def points_in_boxes(points: Tensor, gt_boxes: Tensor, eps: float = 1e-9) -> Tensor:
    """``B×M×A`` bool: point ``A×2`` strictly inside GT box ``B×M×4``."""
    lt = points[None, None] - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - points[None, None]
    return torch.cat((lt, rb), -1).amin(-1) > eps


def resolve_multiple_gts(mask_pos: Tensor, overlaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A prior claimed by several GTs keeps the one with the highest IoU.

    Args: mask_pos, overlaps ``B×M×A``. Returns (gt index ``B×A``, fg mask ``B×A`` bool, mask_pos ``B×M×A``).
    """
    num_gts = mask_pos.sum(1)
    if num_gts.numel() and num_gts.max() > 1:
        best = F.one_hot(overlaps.argmax(1), mask_pos.shape[1]).permute(0, 2, 1).to(mask_pos.dtype)
        mask_pos = torch.where((num_gts > 1)[:, None], best, mask_pos)
    return mask_pos.argmax(1), mask_pos.sum(1) > 0, mask_pos


def gather_targets(gt_labels: Tensor, gt_boxes: Tensor, gt_index: Tensor, fg_mask: Tensor,
                   num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Labels ``B×A`` (background = ``num_classes``), boxes ``B×A×4`` and one-hot scores ``B×A×C``."""
    labels = gt_labels.gather(1, gt_index).clamp(min=0)
    boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
    labels = torch.where(fg_mask, labels, torch.full_like(labels, num_classes))
    scores = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(gt_boxes.dtype)
    return labels, boxes, scores


def _empty(num_classes: int, pd_scores: Tensor, pd_boxes: Tensor) -> BatchAssignment:
    b, a = pd_scores.shape[:2]
    return BatchAssignment(
        torch.full((b, a), num_classes, dtype=torch.long, device=pd_scores.device),
        torch.zeros_like(pd_boxes), torch.zeros_like(pd_scores),
        torch.zeros((b, a), dtype=torch.bool, device=pd_scores.device),
    )


class TaskAlignedAssigner:
    """Each GT takes the ``topk`` priors inside it with the largest t = s^α · IoU^β (s: predicted
    score of the GT class); soft targets are t normalised per GT to its best IoU.

    Call with ``pd_scores`` ``B×A×C`` (probabilities), ``pd_boxes`` ``B×A×4`` xyxy, ``points`` ``A×2``
    prior centres, ``gt_labels`` ``B×M`` long, ``gt_boxes`` ``B×M×4`` xyxy, ``gt_mask`` ``B×M`` bool
    (padding = False); all coordinates in the same unit (input pixels). Returns :class:`BatchAssignment`.
    Computes in float32 under autocast (half-precision inputs are cast up).
    """

    def __init__(self, num_classes: int, topk: int = 13, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9):
        self.num_classes, self.topk, self.alpha, self.beta, self.eps = num_classes, topk, alpha, beta, eps

    @torch.no_grad()
    @float32_guard
    def __call__(self, pd_scores: Tensor, pd_boxes: Tensor, points: Tensor, gt_labels: Tensor,
                 gt_boxes: Tensor, gt_mask: Tensor) -> BatchAssignment:
        if gt_boxes.shape[1] == 0:
            return _empty(self.num_classes, pd_scores, pd_boxes)
        overlaps = batched_pairwise_iou(gt_boxes, pd_boxes)  # B×M×A
        cls_idx = gt_labels.clamp(0, self.num_classes - 1)[..., None].expand(-1, -1, pd_scores.shape[1])
        gt_scores = pd_scores.permute(0, 2, 1).gather(1, cls_idx)  # B×M×A
        metric = gt_scores.pow(self.alpha) * overlaps.pow(self.beta)
        inside = points_in_boxes(points, gt_boxes).to(metric.dtype)
        mask_pos = self._topk_mask(metric * inside, gt_mask) * inside * gt_mask[..., None].to(metric.dtype)
        gt_index, fg_mask, mask_pos = resolve_multiple_gts(mask_pos, overlaps)
        labels, boxes, scores = gather_targets(gt_labels, gt_boxes, gt_index, fg_mask, self.num_classes)
        metric = metric * mask_pos
        norm = metric * (overlaps * mask_pos).amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + self.eps)
        scores = scores * norm.amax(1)[..., None]
        return BatchAssignment(labels, boxes, scores, fg_mask)

    def _topk_mask(self, metric: Tensor, gt_mask: Tensor) -> Tensor:
        """``B×M×A`` 0/1: the top-k priors by ``metric`` of each real GT."""
        k = min(self.topk, metric.shape[-1])
        idx = metric.topk(k, dim=-1).indices
        out = torch.zeros_like(metric)
        out.scatter_(-1, idx, 1.0)
        return out * gt_mask[..., None].to(metric.dtype)
