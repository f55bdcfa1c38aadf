"""YOLOv6 v3.0 training losses (arXiv 2301.05586; assignment and losses as in YOLOv6 v1, arXiv 2209.02976):
TAL (ATSS during warm-up) assignment, VarifocalLoss + IoU loss (SIoU/GIoU) + DFL, and the anchor-aided
(AAT) branch loss ("Anchor-Aided Training").

Conventions: per-level raw maps are flattened to ``B×A×K`` in level, row, column order; box
distances are in stride units (reference layout), boxes in input pixels only for assignment.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..assigners.atss import ATSSAssigner
from ..assigners.task_aligned import BatchAssignment, TaskAlignedAssigner
from ..ops.boxes import bbox2distance, box_cxcywh_to_xyxy, distance2bbox
from ..ops.losses import distribution_focal_loss, iou_loss, varifocal_loss
from ..ops.precision import float32_guard
from ..structures import Target
from .yolov6_head import SEED_ANCHORS

__all__ = ["YOLOv6Criterion", "decode_dense", "make_grid", "flatten_levels", "dfl_expectation", "pad_targets"]

LOSS_WEIGHTS = {"cls": 1.0, "iou": 2.5, "dfl": 0.5}


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level ``B×K×H×W`` → ``B×ΣHW×K``."""
    return torch.cat([m.flatten(2).permute(0, 2, 1) for m in maps], 1)


def make_grid(maps: Sequence[Tensor], strides: Sequence[int], offset: float = 0.5) -> tuple[Tensor, Tensor, list[int]]:
    """Cell centres ``A×2`` in stride units, strides ``A×1`` and priors per level."""
    points, stride_t, sizes = [], [], []
    for m, s in zip(maps, strides):
        h, w = m.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=m.device, dtype=torch.float32) + offset,
                                torch.arange(w, device=m.device, dtype=torch.float32) + offset, indexing="ij")
        points.append(torch.stack((xs, ys), -1).reshape(-1, 2))
        stride_t.append(torch.full((h * w, 1), float(s), device=m.device))
        sizes.append(h * w)
    return torch.cat(points), torch.cat(stride_t), sizes


def dfl_expectation(dist_logits: Tensor, reg_max: int) -> Tensor:
    """``…×4(R+1)`` DFL logits → ``…×4`` expected distances (softmax over bins · [0..R])."""
    if reg_max == 0:
        return dist_logits
    proj = torch.arange(reg_max + 1, device=dist_logits.device, dtype=dist_logits.dtype)
    return dist_logits.unflatten(-1, (4, reg_max + 1)).softmax(-1) @ proj


def decode_dense(cls_maps: Sequence[Tensor], box_maps: Sequence[Tensor], strides: Sequence[int],
                 reg_max: int) -> tuple[Tensor, Tensor]:
    """Boxes ``N×A×4`` xyxy in input pixels and scores ``N×A×C`` (sigmoid), traceable."""
    points, stride_t, _ = make_grid(cls_maps, strides)
    dist = dfl_expectation(flatten_levels(box_maps), reg_max)
    boxes = distance2bbox(points.to(dist.dtype), dist) * stride_t.to(dist.dtype)
    return boxes, flatten_levels(cls_maps).sigmoid()


def pad_targets(targets: Sequence[Target], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Ground truth padded to the largest count: labels ``B×M`` long, boxes ``B×M×4``, mask ``B×M`` bool."""
    m = max((len(t["labels"]) for t in targets), default=0)
    b = len(targets)
    labels = torch.zeros((b, m), dtype=torch.long, device=device)
    boxes = torch.zeros((b, m, 4), device=device)
    mask = torch.zeros((b, m), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        labels[i, :n] = t["labels"].to(device).long()
        boxes[i, :n] = t["boxes"].to(device).float()
        mask[i, :n] = True
    return labels, boxes, mask


class YOLOv6Criterion:
    """Computes YOLOv6's losses from raw outputs (see module docstring).

    Args:
        num_classes, strides, reg_max: of the model.
        iou_type: ``siou`` or ``giou``.
        atss_warmup_epochs: epochs (from 0) that use ATSS instead of TAL.
        tal_topk/tal_alpha/tal_beta: formal assigner; atss_topk: warm-up; aat_topk: TAL of the AAT branch.
    """

    def __init__(self, num_classes: int, strides: Sequence[int], reg_max: int, *, iou_type: str = "giou",
                 atss_warmup_epochs: int = 0, tal_topk: int = 13, tal_alpha: float = 1.0, tal_beta: float = 6.0,
                 atss_topk: int = 9, aat_topk: int = 26, grid_cell_size: float = 5.0):
        self.num_classes, self.strides, self.reg_max, self.iou_type = num_classes, tuple(strides), reg_max, iou_type
        self.atss_warmup_epochs = atss_warmup_epochs
        self.grid_cell_size = grid_cell_size
        self.tal = TaskAlignedAssigner(num_classes, tal_topk, tal_alpha, tal_beta)
        self.tal_ab = TaskAlignedAssigner(num_classes, aat_topk, tal_alpha, tal_beta)
        self.atss = ATSSAssigner(num_classes, atss_topk)

    # ------------------------------------------------------------------ assignment
    def assign(self, cls_logits: Tensor, pred_boxes_s: Tensor, points: Tensor, stride_t: Tensor,
               sizes: list[int], gt: tuple[Tensor, Tensor, Tensor], epoch: int) -> BatchAssignment:
        """Assign with predictions in stride units (``B×A×4``); returns targets in stride units."""
        labels, boxes, mask = gt
        pred_px = pred_boxes_s.detach() * stride_t
        if epoch < self.atss_warmup_epochs:
            half = self.grid_cell_size * stride_t / 2
            centers = points * stride_t
            anchors = torch.cat((centers - half, centers + half), -1)
            res = self.atss(anchors, sizes, labels, boxes, mask, pred_px)
        else:
            res = self.tal(cls_logits.detach().sigmoid(), pred_px, points * stride_t, labels, boxes, mask)
        res.boxes = res.boxes / stride_t
        return res

    def assign_outputs(self, outputs: dict, targets: Sequence[Target], epoch: int) -> tuple[BatchAssignment, dict]:
        """Assignment of the anchor-free branch plus the flattened predictions it used."""
        cls = flatten_levels(outputs["cls"])
        points, stride_t, sizes = make_grid(outputs["cls"], self.strides)
        dist_key = "box_dfl" if "box_dfl" in outputs else "box"
        reg_max = self.reg_max if dist_key == "box" else self._dfl_bins(outputs) - 1
        dist_logits = flatten_levels(outputs[dist_key])
        pred_boxes = distance2bbox(points, dfl_expectation(dist_logits, reg_max))
        gt = pad_targets(targets, cls.device)
        res = self.assign(cls, pred_boxes, points, stride_t, sizes, gt, epoch)
        flat = {"cls": cls, "points": points, "stride": stride_t, "dist_logits": dist_logits,
                "reg_max": reg_max, "pred_boxes": pred_boxes, "gt": gt}
        return res, flat

    @staticmethod
    def _dfl_bins(outputs: dict) -> int:
        return outputs["box_dfl"][0].shape[1] // 4

    # ------------------------------------------------------------------ losses
    @float32_guard
    def __call__(self, outputs: dict, targets: Sequence[Target], epoch: int = 0) -> dict[str, Tensor]:
        res, flat = self.assign_outputs(outputs, targets, epoch)
        cls_loss, tss = self._vfl(flat["cls"], res, strict_norm=True)
        pos = res.fg_mask
        weight = res.scores.sum(-1)[pos]
        boxes_lrtb = flat["pred_boxes"]
        if "box_dfl" in outputs:  # DLD: the IoU loss trains both branches; DFL only the auxiliary one
            main = distance2bbox(flat["points"], flatten_levels(outputs["box"]))
            loss_iou = self._iou(main, res, weight, tss) + self._iou(boxes_lrtb, res, weight, tss)
        else:
            loss_iou = self._iou(boxes_lrtb, res, weight, tss)
        losses = {"loss_cls": LOSS_WEIGHTS["cls"] * cls_loss, "loss_iou": LOSS_WEIGHTS["iou"] * loss_iou}
        if flat["reg_max"] > 0:
            losses["loss_dfl"] = LOSS_WEIGHTS["dfl"] * self._dfl(flat, res, weight, tss)
        if "cls_ab" in outputs:
            losses.update(self._anchor_aided(outputs, flat["gt"]))
        return losses

    def _vfl(self, cls: Tensor, res: BatchAssignment, strict_norm: bool) -> tuple[Tensor, Tensor]:
        onehot = F.one_hot(res.labels, self.num_classes + 1)[..., :self.num_classes].to(cls.dtype)
        loss = varifocal_loss(cls, res.scores.to(cls.dtype), onehot).sum()
        tss = res.scores.sum()
        limit = 1.0 if strict_norm else 0.0
        return (loss / tss if tss > limit else loss), tss

    def _iou(self, pred_boxes: Tensor, res: BatchAssignment, weight: Tensor, tss: Tensor) -> Tensor:
        pos = res.fg_mask
        if not pos.any():
            return pred_boxes.sum() * 0.0
        loss = (iou_loss(pred_boxes[pos], res.boxes[pos], self.iou_type, eps=1e-10) * weight).sum()
        return loss / tss if tss > 1 else loss

    def _dfl(self, flat: dict, res: BatchAssignment, weight: Tensor, tss: Tensor) -> Tensor:
        pos, reg_max = res.fg_mask, flat["reg_max"]
        if not pos.any():
            return flat["dist_logits"].sum() * 0.0
        target = bbox2distance(flat["points"][None].expand_as(res.boxes[..., :2])[pos], res.boxes[pos], reg_max)
        logits = flat["dist_logits"][pos].reshape(-1, reg_max + 1)
        per_side = distribution_focal_loss(logits, target.reshape(-1)).reshape(-1, 4).mean(-1)
        loss = (per_side * weight).sum()
        return loss / tss if tss > 1 else loss

    def _anchor_aided(self, outputs: dict, gt: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        """AAT loss: 3 anchors per point from the seed anchors, TAL top-26, VFL + IoU, equal weight."""
        cls, boxes, points, stride_t = self._decode_ab(outputs)
        labels, gt_boxes, mask = gt
        res = self.tal_ab(cls.detach().sigmoid(), boxes.detach() * stride_t, points * stride_t, labels, gt_boxes, mask)
        res.boxes = res.boxes / stride_t
        cls_loss, tss = self._vfl(cls, res, strict_norm=False)
        weight = res.scores.sum(-1)[res.fg_mask]
        pos = res.fg_mask
        if pos.any():
            loss_iou = (iou_loss(boxes[pos], res.boxes[pos], self.iou_type, eps=1e-10) * weight).sum()
            loss_iou = loss_iou / tss if tss > 0 else loss_iou
        else:
            loss_iou = boxes.sum() * 0.0
        return {"loss_cls_ab": LOSS_WEIGHTS["cls"] * cls_loss, "loss_iou_ab": LOSS_WEIGHTS["iou"] * loss_iou}

    def _decode_ab(self, outputs: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flattened AAT class logits ``B×A'×C`` and boxes ``B×A'×4`` (stride units, A' = 3·ΣHW, anchor-major
        per level); xy = raw + cell centre, wh = (2σ(t))² · seed anchor / stride."""
        cls_all, box_all, pts_all, str_all = [], [], [], []
        for lvl, (c, r, s) in enumerate(zip(outputs["cls_ab"], outputs["box_ab"], self.strides)):
            b, _, h, w = c.shape
            na = len(SEED_ANCHORS[lvl])
            cls_all.append(c.reshape(b, na, -1, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, self.num_classes))
            r = r.reshape(b, na, 4, h, w).permute(0, 1, 3, 4, 2)
            points, _, _ = make_grid([c], [s])
            anchor_wh = torch.tensor(SEED_ANCHORS[lvl], device=r.device, dtype=r.dtype) / s
            xy = r[..., :2] + points.reshape(1, 1, h, w, 2).to(r.dtype)
            wh = (r[..., 2:].sigmoid() * 2).pow(2) * anchor_wh.reshape(1, na, 1, 1, 2)
            box_all.append(box_cxcywh_to_xyxy(torch.cat((xy, wh), -1)).reshape(b, -1, 4))
            pts_all.append(points.repeat(na, 1))
            str_all.append(torch.full((na * h * w, 1), float(s), device=r.device))
        return torch.cat(cls_all, 1), torch.cat(box_all, 1), torch.cat(pts_all), torch.cat(str_all)
