"""Box utilities in plain torch: conversions and the IoU family (IoU, GIoU, DIoU, CIoU, SIoU).

All boxes are ``…×4`` float tensors. The IoU functions compute in float32 under autocast
(:func:`~detmodels.ops.precision.float32_guard`). ``pairwise_*`` functions compare ``N×4`` with ``M×4`` and return
``N×M``; ``aligned_*`` functions compare ``…×4`` with ``…×4`` element-wise and return ``…``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .precision import float32_guard

__all__ = [
    "box_xyxy_to_cxcywh", "box_cxcywh_to_xyxy", "box_xywh_to_xyxy", "box_xyxy_to_xywh", "box_area",
    "pairwise_iou", "aligned_iou", "aligned_giou", "aligned_diou", "aligned_ciou", "aligned_siou",
    "distance2bbox", "bbox2distance", "clip_boxes",
]

_EPS = 1e-7


def box_xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def box_cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def box_xywh_to_xyxy(b: Tensor) -> Tensor:
    x, y, w, h = b.unbind(-1)
    return torch.stack((x, y, x + w, y + h), -1)


def box_xyxy_to_xywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), -1)


def box_area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def clip_boxes(b: Tensor, hw: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes to an image of height/width ``hw``."""
    h, w = hw
    return torch.stack(
        (b[..., 0].clamp(0, w), b[..., 1].clamp(0, h), b[..., 2].clamp(0, w), b[..., 3].clamp(0, h)), -1
    )


@float32_guard
def pairwise_iou(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """IoU of every box in ``a`` (``N×4``) with every box in ``b`` (``M×4``) → ``N×M``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=eps)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter, box_area(a) + box_area(b) - inter


def _enclosing(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0], wh[..., 1]


@float32_guard
def aligned_iou(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    inter, union = _inter_union(a, b)
    return inter / (union + eps)


@float32_guard
def aligned_giou(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """Generalised IoU (Rezatofighi et al. 2019): IoU − (C − U)/C with C the enclosing box area."""
    inter, union = _inter_union(a, b)
    iou = inter / (union + eps)
    cw, ch = _enclosing(a, b)
    c_area = cw * ch + eps
    return iou - (c_area - union) / c_area


def _center_dist2(a: Tensor, b: Tensor) -> Tensor:
    ca = (a[..., :2] + a[..., 2:]) / 2
    cb = (b[..., :2] + b[..., 2:]) / 2
    return ((ca - cb) ** 2).sum(-1)


@float32_guard
def aligned_diou(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """Distance IoU (Zheng et al. 2020): IoU − ρ²(centres)/c² with c the enclosing diagonal."""
    iou = aligned_iou(a, b, eps)
    cw, ch = _enclosing(a, b)
    return iou - _center_dist2(a, b) / (cw**2 + ch**2 + eps)


@float32_guard
def aligned_ciou(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """Complete IoU (Zheng et al. 2020): DIoU − α·v, v = 4/π²·(atan(w_b/h_b) − atan(w_a/h_a))²."""
    iou = aligned_iou(a, b, eps)
    cw, ch = _enclosing(a, b)
    diou_term = _center_dist2(a, b) / (cw**2 + ch**2 + eps)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    v = (4 / math.pi**2) * (torch.atan(wb / (hb + eps)) - torch.atan(wa / (ha + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - diou_term - alpha * v


@float32_guard
def aligned_siou(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """SCYLLA-IoU (Gevorgyan 2022), as YOLOv6 uses it: IoU − (Δ + Ω)/2 with angle-aware distance."""
    iou = aligned_iou(a, b, eps)
    cw, ch = _enclosing(a, b)
    ca = (a[..., :2] + a[..., 2:]) / 2
    cb = (b[..., :2] + b[..., 2:]) / 2
    s_cw, s_ch = cb[..., 0] - ca[..., 0], cb[..., 1] - ca[..., 1]
    sigma = torch.sqrt(s_cw**2 + s_ch**2) + eps
    sin_alpha_1 = s_cw.abs() / sigma
    sin_alpha_2 = s_ch.abs() / sigma
    threshold = math.sqrt(2) / 2
    sin_alpha = torch.where(sin_alpha_1 > threshold, sin_alpha_2, sin_alpha_1)
    angle_cost = torch.cos(torch.arcsin(sin_alpha) * 2 - math.pi / 2)
    rho_x = (s_cw / (cw + eps)) ** 2
    rho_y = (s_ch / (ch + eps)) ** 2
    gamma = angle_cost - 2
    distance_cost = 2 - torch.exp(gamma * rho_x) - torch.exp(gamma * rho_y)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    omiga_w = (wa - wb).abs() / torch.maximum(wa, wb).clamp(min=eps)
    omiga_h = (ha - hb).abs() / torch.maximum(ha, hb).clamp(min=eps)
    shape_cost = (1 - torch.exp(-omiga_w)) ** 4 + (1 - torch.exp(-omiga_h)) ** 4
    return iou - 0.5 * (distance_cost + shape_cost)


def distance2bbox(points: Tensor, distance: Tensor) -> Tensor:
    """Points ``…×2`` (x, y) and distances ``…×4`` (l, t, r, b) → xyxy boxes ``…×4``."""
    x1y1 = points - distance[..., :2]
    x2y2 = points + distance[..., 2:]
    return torch.cat((x1y1, x2y2), -1)


def bbox2distance(points: Tensor, boxes: Tensor, max_dist: float | None = None, eps: float = 0.01) -> Tensor:
    """Inverse of :func:`distance2bbox`: xyxy ``…×4`` → (l, t, r, b), optionally clamped to ``max_dist - eps``."""
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    d = torch.cat((lt, rb), -1)
    if max_dist is not None:
        d = d.clamp(min=0, max=max_dist - eps)
    return d
