"""Dynamic soft-label assignment (RTMDet, Lyu et al. 2022, arXiv 2212.07784, §3.2)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.boxes import pairwise_iou
from ..ops.precision import float32_guard

__all__ = ["DynamicSoftLabelAssigner", "Assignment", "mask_center_of_mass"]

_EPS = 1e-7
_INF = 1e8


@dataclasses.dataclass
class Assignment:
    """Result of assigning ``A`` priors to ``M`` ground-truth boxes of one image.

    Attributes:
        gt_index: ``A`` long, index of the matched GT box, ``-1`` for background.
        metrics: ``A`` float, IoU of the matched prediction with its GT (the soft target), 0 for background.
    """

    gt_index: Tensor
    metrics: Tensor

    @property
    def positive(self) -> Tensor:
        return self.gt_index >= 0


def mask_center_of_mass(masks: Tensor, eps: float = _EPS) -> Tensor:
    """Mass centres ``M×2`` (x, y, pixel index units) of binary masks ``M×H×W`` (RTMDet-Ins §3.3)."""
    m = masks.float()
    h, w = m.shape[-2:]
    ys = torch.arange(h, device=m.device, dtype=m.dtype)[:, None]
    xs = torch.arange(w, device=m.device, dtype=m.dtype)[None, :]
    norm = m.sum(dim=(1, 2)).clamp(min=eps)
    return torch.stack(((m * xs).sum(dim=(1, 2)) / norm, (m * ys).sum(dim=(1, 2)) / norm), 1)


class DynamicSoftLabelAssigner:
    """RTMDet §3.2 dynamic soft-label assigner (SimOTA-style dynamic k with soft costs).

    For the priors whose point lies strictly inside a GT box the matching cost to GT ``g`` is::

        C = Σ_c BCE(logit_c, y_c)·|y_c − σ(logit_c)|²        y = onehot(label_g) · IoU(pred, g)
          + iou_weight · (−log(IoU(pred, g) + 1e-7))
          + α^(d − β)                                        d = ‖prior − centre_g‖ / stride

    with the centre of ``g`` its box centre, or its mask's centre of mass when masks are given.
    Each GT takes its ``k = max(1, ⌊Σ top-``topk`` IoUs⌋)`` cheapest priors; a prior chosen by
    several GTs keeps the cheapest one. Defaults: α 10, β 3, topk 13, iou_weight 3. The values'
    rules live in one place, ``detmodels.DSLOptions`` (α > 1, β >= 0, topk >= 1, iou_weight >= 0).

    Candidates: as in the reference (mmdetection), a prior is a candidate for every GT once it
    lies inside *some* GT box. ``restrict_to_box=True`` makes it a candidate only for the boxes
    that contain it; both agree unless a prior inside one box is cheapest for a box it lies
    outside of.
    """

    def __init__(self, soft_center_alpha: float = 10.0, soft_center_beta: float = 3.0, topk: int = 13,
                 iou_weight: float = 3.0, restrict_to_box: bool = False):
        self.soft_center_alpha = float(soft_center_alpha)
        self.soft_center_beta = float(soft_center_beta)
        self.topk = int(topk)
        self.iou_weight = float(iou_weight)
        self.restrict_to_box = bool(restrict_to_box)

    @torch.no_grad()
    @float32_guard
    def assign(self, pred_logits: Tensor, pred_boxes: Tensor, priors: Tensor, gt_boxes: Tensor,
               gt_labels: Tensor, gt_centers: Tensor | None = None) -> Assignment:
        """Assign one image's priors.

        Args:
            pred_logits: ``A×C`` class logits (pre-sigmoid).
            pred_boxes: ``A×4`` decoded xyxy boxes (input pixels).
            priors: ``A×3`` or ``A×4``: point (x, y) and stride (third column).
            gt_boxes: ``M×4`` xyxy; gt_labels: ``M`` long in ``[0, C)``.
            gt_centers: ``M×2`` centres for the centre prior (default: box centres).
        """
        return self._assign(pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_centers)

    def _assign(self, logits: Tensor, boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                gt_centers: Tensor | None) -> Assignment:
        num_priors, num_gt = boxes.shape[0], gt_boxes.shape[0]
        gt_index = torch.full((num_priors,), -1, dtype=torch.long, device=boxes.device)
        metrics = boxes.new_zeros(num_priors)
        if num_gt == 0 or num_priors == 0:
            return Assignment(gt_index, metrics)
        points = priors[:, :2]
        deltas = torch.cat((points[:, None] - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - points[:, None]), -1)
        inside = deltas.min(-1).values > 0  # A×M
        valid = inside.any(1)
        if not bool(valid.any()):
            return Assignment(gt_index, metrics)
        cost, ious = self._cost(logits[valid], boxes[valid], priors[valid], gt_boxes, gt_labels, gt_centers)
        candidate = inside[valid] if self.restrict_to_box else torch.ones_like(inside[valid])
        cost = cost + (~candidate).to(cost.dtype) * _INF
        matched_gt, matched_iou, fg = self._dynamic_k(cost, ious, candidate)
        valid_idx = valid.nonzero(as_tuple=True)[0][fg]
        gt_index[valid_idx] = matched_gt
        metrics[valid_idx] = matched_iou
        return Assignment(gt_index, metrics)

    def _cost(self, logits: Tensor, boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
              gt_centers: Tensor | None) -> tuple[Tensor, Tensor]:
        """Cost ``V×M`` and IoU ``V×M`` of the ``V`` candidate priors."""
        if gt_centers is None:
            gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        dist = (priors[:, None, :2] - gt_centers[None]).pow(2).sum(-1).sqrt() / priors[:, 2:3]
        center_cost = torch.pow(self.soft_center_alpha, dist - self.soft_center_beta)
        ious = pairwise_iou(boxes, gt_boxes)
        iou_cost = -torch.log(ious + _EPS) * self.iou_weight
        onehot = F.one_hot(gt_labels.long(), logits.shape[-1]).to(logits.dtype)  # M×C
        soft_label = onehot[None] * ious[..., None]  # V×M×C
        scores = logits[:, None, :].expand_as(soft_label)
        cls_cost = F.binary_cross_entropy_with_logits(scores, soft_label, reduction="none")
        cls_cost = (cls_cost * (soft_label - scores.sigmoid()).abs().pow(2)).sum(-1)
        return cls_cost + iou_cost + center_cost, ious

    def _dynamic_k(self, cost: Tensor, ious: Tensor, inside: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Dynamic-k selection → (matched GT per foreground candidate, its IoU, foreground mask ``V``)."""
        num_cand, num_gt = cost.shape
        topk = min(self.topk, num_cand)
        dynamic_ks = (ious * inside).topk(topk, dim=0).values.sum(0).int().clamp(min=1)
        matching = torch.zeros_like(cost, dtype=torch.bool)
        for g in range(num_gt):
            k = min(int(dynamic_ks[g]), int(inside[:, g].sum()))
            if k > 0:
                matching[cost[:, g].topk(k, largest=False).indices, g] = True
        multi = matching.sum(1) > 1
        if bool(multi.any()):
            best = cost[multi].argmin(1)
            matching[multi] = False
            matching[multi.nonzero(as_tuple=True)[0], best] = True
        fg = matching.any(1)
        matched_gt = matching[fg].float().argmax(1)
        matched_iou = (matching.float() * ious).sum(1)[fg]
        return matched_gt, matched_iou, fg
