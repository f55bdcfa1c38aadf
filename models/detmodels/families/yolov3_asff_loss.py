"""Losses of the ASFF repository's YOLOv3 head (arXiv 1911.09516 §4 "strong baseline"; its
``models/yolov3_head.py``), one level at a time, without per-GT Python loops.

Assignment: each GT goes to the cell containing its centre, at the level owning the best of the 9
reference anchors (IoU of widths/heights); the anchor-free slot takes it instead when its guided
size overlaps the GT better than that anchor. Predictions whose IoU with any GT exceeds 0.7 are
not penalised as background. When several GTs write the same cell slot, the last one wins (as the
reference's sequential loop). Terms, each summed and divided by the batch size:

* ``loss_anchor``: 1 − IoU² between the guided anchor sizes (anchor slot and anchor-free slot)
  and the GT size, both centred;
* ``loss_iou``: (2 − w·h/img²) · (1 − IoU²) of the decoded box;
* ``loss_l1``: the same scale × (BCE on the centre offsets + L1 on log(w / guided anchor));
* ``loss_obj``: BCE on objectness outside the ignored predictions;
* ``loss_cls``: BCE on classes with label smoothing (targets 1/C and 1 − 1/C).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import box_xyxy_to_cxcywh, float32_guard
from ..structures import Target

__all__ = ["YOLOv3LossConfig", "yolov3_level_loss", "cxcywh_iou", "keep_last"]


@dataclasses.dataclass(frozen=True)
class YOLOv3LossConfig:
    ignore_thr: float = 0.7
    label_smooth: bool = True


@float32_guard
def cxcywh_iou(a: Tensor, b: Tensor, eps: float = 0.0) -> Tensor:
    """Aligned IoU of ``…×4`` (cx, cy, w, h) boxes; zero when they do not overlap."""
    tl = torch.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
    br = torch.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    inter = (br - tl).prod(-1) * (tl < br).all(-1).to(a.dtype)
    return inter / (a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter + eps)


def keep_last(keys: Tensor) -> Tensor:
    """Positions of the last occurrence of every distinct value of the 1-D ``keys``."""
    uniq, inverse = keys.unique(return_inverse=True)
    order = torch.arange(keys.numel(), device=keys.device)
    return torch.full((uniq.numel(),), -1, dtype=torch.long, device=keys.device).scatter_reduce(
        0, inverse, order, "amax")


def _gather_gts(targets: Sequence[Target], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """All GTs of the batch: image index ``G``, boxes ``G×4`` (cx, cy, w, h), labels ``G``."""
    img, boxes, labels = [], [], []
    for b, t in enumerate(targets):
        bx = t["boxes"].to(device).float().reshape(-1, 4)
        img.append(torch.full((len(bx),), b, dtype=torch.long, device=device))
        boxes.append(box_xyxy_to_cxcywh(bx))
        labels.append(t["labels"].to(device).long().reshape(-1))
    return torch.cat(img), torch.cat(boxes), torch.cat(labels)


def _ignore_mask(pred: Tensor, img: Tensor, gts: Tensor, thr: float) -> Tensor:
    """``N×S×H×W`` True where a prediction overlaps some GT of its image by more than ``thr``."""
    n = pred.shape[0]
    flat = pred.detach().reshape(n, -1, 4)
    out = torch.zeros(flat.shape[:2], dtype=torch.bool, device=pred.device)
    for b in range(n):
        g = gts[img == b]
        if len(g):
            out[b] = cxcywh_iou(flat[b][:, None], g[None]).amax(1) > thr
    return out.reshape(pred.shape[:4])


@float32_guard
def _wh_iou(wh_a: Tensor, wh_b: Tensor) -> Tensor:
    """IoU of centred boxes from sizes ``…×2`` (broadcast)."""
    inter = torch.minimum(wh_a, wh_b).prod(-1)
    return inter / (wh_a.prod(-1) + wh_b.prod(-1) - inter)


def _box_targets(shape: torch.Size, img: Tensor, a: Tensor, gj: Tensor, gi: Tensor,
                 gts: Tensor) -> tuple[Tensor, Tensor]:
    """GT boxes written at each GT's anchor slot and at the anchor-free slot of its cell (last
    writer wins) → dense targets ``N×S×H×W×4`` and the mask of written slots ``N×S×H×W``."""
    n, num_slots, h, w = shape
    slots = torch.stack((a, torch.full_like(a, num_slots - 1)), 1).reshape(-1)
    img2, gj2, gi2 = img.repeat_interleave(2), gj.repeat_interleave(2), gi.repeat_interleave(2)
    k = keep_last(((img2 * num_slots + slots) * h + gj2) * w + gi2)
    index = (img2[k], slots[k], gj2[k], gi2[k])
    target_box = gts.new_zeros(n, num_slots, h, w, 4)
    target_box[index] = gts.repeat_interleave(2, 0)[k]
    mask = torch.zeros(n, num_slots, h, w, dtype=torch.bool, device=gts.device)
    mask[index] = True
    return target_box, mask


@float32_guard
def yolov3_level_loss(box: Tensor, obj: Tensor, cls: Tensor, slot_anchors: Tensor, pred: Tensor,
                      targets: Sequence[Target], anchors: Tensor, level: int, stride: int,
                      image_hw: tuple[int, int], cfg: YOLOv3LossConfig) -> dict[str, Tensor]:
    """Loss terms of one level.

    Args:
        box: ``N×S×H×W×4`` raw (tx, ty, tw, th); obj ``N×S×H×W``; cls ``N×S×H×W×C`` logits.
        slot_anchors: ``N×S×H×W×2`` guided anchor sizes (pixels, with gradient); pred: ``N×S×H×W×4``
            decoded (cx, cy, w, h) pixels. anchors: the 9 reference anchors ``9×2``, 3 per level.
    """
    n, num_slots, h, w, num_classes = cls.shape
    free = num_slots - 1
    img, gts, labels = _gather_gts(targets, box.device)
    obj_w = (~_ignore_mask(pred, img, gts, cfg.ignore_thr)).to(obj.dtype)
    zero = box.sum() * 0.0 + slot_anchors.sum() * 0.0  # keeps guide_wh in the graph (DDP) without positives
    best_iou, best = _wh_iou(gts[:, None, 2:], anchors[None].to(gts.dtype)).max(1) if len(gts) else (gts, gts)
    sel = (best // 3 == level) if len(gts) else torch.zeros(0, dtype=torch.bool, device=box.device)
    if not bool(sel.any()):
        obj_t = torch.zeros_like(obj)
        loss_obj = (obj_w * F.binary_cross_entropy_with_logits(obj, obj_t, reduction="none")).sum() / n
        return {"loss_anchor": zero, "loss_iou": zero, "loss_l1": zero, "loss_obj": loss_obj, "loss_cls": zero}
    img, gts, labels, a, best_iou = img[sel], gts[sel], labels[sel], best[sel] % 3, best_iou[sel]
    gi = (gts[:, 0] / stride).long().clamp(0, w - 1)
    gj = (gts[:, 1] / stride).long().clamp(0, h - 1)
    free_iou = _wh_iou(gts[:, 2:], slot_anchors[img, free, gj, gi].detach())
    aa = torch.where(free_iou > best_iou, torch.full_like(a, free), a)

    target_box, anchor_mask = _box_targets(box.shape[:4], img, a, gj, gi, gts)
    # Everything else is written at the chosen slot aa.
    k1 = keep_last(((img * num_slots + aa) * h + gj) * w + gi)
    b1, s1, j1, i1, g1, l1 = img[k1], aa[k1], gj[k1], gi[k1], gts[k1], labels[k1]
    scale = 2.0 - g1[:, 2] * g1[:, 3] / float(image_hw[0] * image_hw[1])
    pa = slot_anchors[b1, s1, j1, i1]
    l1_target = torch.stack((g1[:, 0] / stride - i1, g1[:, 1] / stride - j1,
                             torch.log(g1[:, 2] / pa[:, 0] + 1e-12), torch.log(g1[:, 3] / pa[:, 1] + 1e-12)), 1)
    raw = box[b1, s1, j1, i1]
    loss_xy = (scale[:, None] * F.binary_cross_entropy_with_logits(raw[:, :2], l1_target[:, :2], reduction="none"))
    loss_wh = scale[:, None] * (raw[:, 2:] - l1_target[:, 2:]).abs()
    iou = cxcywh_iou(pred[b1, s1, j1, i1], target_box[b1, s1, j1, i1], eps=1e-16)
    loss_iou = (scale * (1 - iou**2)).sum() / n

    anchored = torch.cat((torch.zeros_like(slot_anchors[anchor_mask]), slot_anchors[anchor_mask]), -1)
    t_anchor = torch.cat((torch.zeros_like(anchored[:, :2]), target_box[anchor_mask][:, 2:]), -1)
    loss_anchor = (1 - cxcywh_iou(anchored, t_anchor, eps=1e-16) ** 2).sum() / n

    obj_t = torch.zeros_like(obj)
    obj_t[b1, s1, j1, i1] = 1.0
    obj_w = obj_w.index_put((b1, s1, j1, i1), torch.ones_like(scale))
    loss_obj = (obj_w * F.binary_cross_entropy_with_logits(obj, obj_t, reduction="none")).sum() / n

    smooth = 1.0 / num_classes if cfg.label_smooth else 0.0
    cls_t = torch.full((len(k1), num_classes), smooth, device=box.device, dtype=cls.dtype)
    cls_t[torch.arange(len(k1), device=box.device), l1] = 1.0 - smooth
    loss_cls = F.binary_cross_entropy_with_logits(cls[b1, s1, j1, i1], cls_t, reduction="none").sum() / n
    return {"loss_anchor": loss_anchor, "loss_iou": loss_iou, "loss_l1": (loss_xy.sum() + loss_wh.sum()) / n,
            "loss_obj": loss_obj, "loss_cls": loss_cls}
