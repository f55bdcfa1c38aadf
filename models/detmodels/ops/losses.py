"""Detection losses in plain torch. Each returns the *unreduced* per-element loss unless noted,
so callers apply the normalisation their paper prescribes. Every loss computes in float32, autocast
or not (:func:`~detmodels.ops.precision.float32_guard`): half-precision inputs are cast up.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import aligned_ciou, aligned_diou, aligned_giou, aligned_iou, aligned_siou
from .precision import float32_guard

__all__ = [
    "quality_focal_loss", "varifocal_loss", "sigmoid_focal_loss", "iou_loss", "dice_loss",
    "distribution_focal_loss", "huber_loss", "IOU_FUNCS",
]

IOU_FUNCS = {"iou": aligned_iou, "giou": aligned_giou, "diou": aligned_diou, "ciou": aligned_ciou, "siou": aligned_siou}


@float32_guard
def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """Quality Focal Loss (GFL, Li et al. 2020) as RTMDet uses it (§3.2).

    Args:
        logits: ``P×C`` pre-sigmoid class scores.
        labels: ``P`` long; ``C`` (== num_classes) or any value outside ``[0, C)`` marks background.
        scores: ``P`` IoU quality targets of the positives (ignored for negatives).
    Returns:
        ``P×C`` loss: BCE(σ, y)·|y − σ|^β with y = one-hot × score (0 for background).
    """
    pred = logits.sigmoid()
    num_classes = logits.shape[1]
    target = torch.zeros_like(logits)
    pos = (labels >= 0) & (labels < num_classes)
    pos_idx = pos.nonzero(as_tuple=True)[0]
    target[pos_idx, labels[pos_idx]] = scores[pos_idx].to(target.dtype)
    weight = (pred - target).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


@float32_guard
def varifocal_loss(logits: Tensor, target_scores: Tensor, labels_onehot: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Varifocal Loss (VarifocalNet, Zhang et al. 2021) as in YOLOv6 §2.3.

    weight = α·σ^γ·(1 − onehot) + target·onehot; loss = BCE(σ, target)·weight. Shapes ``…×C``.
    """
    pred = logits.sigmoid()
    weight = alpha * pred.pow(gamma) * (1 - labels_onehot) + target_scores * labels_onehot
    return F.binary_cross_entropy_with_logits(logits, target_scores, reduction="none") * weight


@float32_guard
def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017, RetinaNet §3): −α_t (1 − p_t)^γ log p_t, element-wise (``…×C``).

    ``alpha < 0`` disables the α balancing.
    """
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


@float32_guard
def iou_loss(pred: Tensor, target: Tensor, kind: str = "giou", eps: float = 1e-7) -> Tensor:
    """``1 − IoU-variant`` for aligned xyxy boxes (``…×4`` → ``…``); kind in iou/giou/diou/ciou/siou."""
    if kind not in IOU_FUNCS:
        raise ValueError(f"unknown IoU loss {kind!r}; expected one of {sorted(IOU_FUNCS)}")
    return 1.0 - IOU_FUNCS[kind](pred, target, eps)


@float32_guard
def dice_loss(mask_logits: Tensor, targets: Tensor, eps: float = 5e-6) -> Tensor:
    """V-Net Dice loss per instance: 1 − 2Σpt / (Σp² + Σt² + 2·eps) (mmdet ``DiceLoss``, naive_dice=False).

    Args: mask_logits ``K×H×W`` pre-sigmoid; targets ``K×H×W`` in {0, 1}. Returns ``K``.
    """
    p = mask_logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    num = 2 * (p * t).sum(1)
    den = (p * p).sum(1) + (t * t).sum(1) + 2 * eps
    return 1 - num / den


@float32_guard
def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss (GFL §3.3): cross-entropy to the two bins around a continuous target.

    Args: logits ``P×(R+1)`` over bins 0..R; target ``P`` continuous in ``[0, R)``. Returns ``P``.
    """
    left = target.floor().long().clamp(max=logits.shape[-1] - 2)
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    return (
        F.cross_entropy(logits, left, reduction="none") * w_left
        + F.cross_entropy(logits, right, reduction="none") * w_right
    )


@float32_guard
def huber_loss(pred: Tensor, target: Tensor, delta: float = 0.1) -> Tensor:
    """Huber loss (RetinaNet/SpineNet box loss, δ 0.1), element-wise, TF convention (0.5·x² inside δ)."""
    diff = (pred - target).abs()
    return torch.where(diff < delta, 0.5 * diff**2, delta * (diff - 0.5 * delta))
