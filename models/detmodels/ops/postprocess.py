"""Shared dense-prediction post-processing: score filtering, top-k, class-aware NMS, rescale."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..structures import Detections
from .boxes import clip_boxes
from .nms import batched_nms

__all__ = ["letterbox_scales", "multiclass_nms", "dense_postprocess"]


def letterbox_scales(input_hw: tuple[int, int], image_sizes: Sequence[tuple[int, int]]) -> list[float]:
    """Keep-ratio resize factor per image: ``min(H/h, W/w)`` (see ``structures`` for the convention)."""
    H, W = input_hw
    return [min(H / h, W / w) for h, w in image_sizes]


def multiclass_nms(
    boxes: Tensor, scores: Tensor, score_thr: float, nms_iou: float, max_det: int, pre_nms_topk: int = 30000
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image: boxes ``A×4``, scores ``A×C`` → (boxes ``K×4``, scores ``K``, labels ``K``, prior index ``K``).

    Every (prior, class) pair above ``score_thr`` is a candidate (mmdet/torchvision multi-label style).
    """
    cand = scores > score_thr
    prior_idx, labels = cand.nonzero(as_tuple=True)
    cand_scores = scores[prior_idx, labels]
    if cand_scores.numel() > pre_nms_topk:
        top = cand_scores.topk(pre_nms_topk).indices
        prior_idx, labels, cand_scores = prior_idx[top], labels[top], cand_scores[top]
    cand_boxes = boxes[prior_idx]
    keep = batched_nms(cand_boxes, cand_scores, labels, nms_iou, max_keep=max_det)
    return cand_boxes[keep], cand_scores[keep], labels[keep], prior_idx[keep]


def dense_postprocess(
    boxes: Tensor,
    scores: Tensor,
    input_hw: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]],
    score_thr: float = 0.05,
    nms_iou: float = 0.6,
    max_det: int = 100,
    scale_factors: Sequence[float] | None = None,
    pre_nms_topk: int = 30000,
) -> list[Detections]:
    """Batch of dense predictions (boxes ``N×A×4`` in input pixels, scores ``N×A×C``) → detections
    in original image pixels, one :class:`Detections` per image."""
    if scale_factors is None:
        scale_factors = letterbox_scales(input_hw, image_sizes)
    results = []
    for b in range(boxes.shape[0]):
        kb, ks, kl, _ = multiclass_nms(boxes[b].float(), scores[b].float(), score_thr, nms_iou, max_det, pre_nms_topk)
        kb = clip_boxes(kb / scale_factors[b], tuple(image_sizes[b]))
        results.append(Detections(kb, ks, kl))
    return results
