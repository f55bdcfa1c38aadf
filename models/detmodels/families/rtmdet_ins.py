"""RTMDet-Ins (arXiv 2212.07784, §3.3): RTMDet plus dynamic-kernel instance masks.

Registers ``rtmdet_ins_{tiny,s,m,l,x}``; options are RTMDet's (:class:`RTMDetOptions`, whose
``head.loss_mask_weight`` weights the Dice loss).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..assigners import mask_center_of_mass
from ..base import RawOutputs
from ..ops import clip_boxes, dice_loss, letterbox_scales, multiclass_nms
from ..structures import Detections, Target
from .rtmdet import RTMDet, RTMDetConfig, _flatten_levels, register_variants
from .rtmdet_heads import RTMDetInsSepBNHead, dynamic_mask_logits

__all__ = ["RTMDetIns"]

MASK_LOSS_STRIDE = 4


class RTMDetIns(RTMDet):
    """RTMDet-Ins instance segmentation (§3.3).

    ``forward`` adds ``"kernel"`` (``N×169×H_l×W_l`` per level) and ``"mask_feat"``
    (``N×8×H/8×W/8``). The assigner's centre prior uses each mask's centre of mass. Mask loss:
    Dice (weight 2, averaged over positives) between the positives' mask logits upsampled ×2 to
    stride 4 and the GT masks sampled every 4th pixel from offset 2.
    """

    task = "segm"

    def _make_head(self, cfg: RTMDetConfig, num_classes: int, feat: int) -> nn.Module:
        return RTMDetInsSepBNHead(num_classes, feat, feat, self.strides)

    def forward(self, images: Tensor) -> RawOutputs:
        cls, box, kernel, mask_feat = self.bbox_head(self.neck(self.backbone(images)))
        return {"cls": cls, "box": box, "kernel": kernel, "mask_feat": mask_feat}

    def _gt_centers(self, target: Target, device: torch.device) -> Tensor | None:
        masks = target.get("masks")
        if masks is None or masks.numel() == 0:
            return None
        return mask_center_of_mass(masks.to(device))

    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox", "loss_mask"}``."""
        losses, (priors, gt_index, _) = self._det_loss(outputs, targets)
        losses["loss_mask"] = self.loss_weights["mask"] * self._mask_loss(outputs, targets, priors, gt_index)
        return losses

    def _mask_loss(self, outputs: RawOutputs, targets: Sequence[Target], priors: Tensor, gt_index: Tensor) -> Tensor:
        kernels = _flatten_levels(outputs["kernel"]).float()
        mask_feat = outputs["mask_feat"].float()
        logits, gts = [], []
        with torch.autocast(device_type=mask_feat.device.type, enabled=False):
            for b, t in enumerate(targets):
                pos = gt_index[b] >= 0
                if not bool(pos.any()) or "masks" not in t:
                    continue
                if tuple(t["masks"].shape[-2:]) != self._input_hw(outputs):
                    raise ValueError(f"target masks must be at the input size {self._input_hw(outputs)}, "
                                     f"got {tuple(t['masks'].shape[-2:])}")
                logits.append(dynamic_mask_logits(mask_feat[b], kernels[b, pos], priors[pos], self.strides[0]))
                gts.append(t["masks"].to(mask_feat.device)[gt_index[b, pos]])
            zero = mask_feat.sum() * 0 + kernels.sum() * 0
            if not logits:
                return zero
            pred = torch.cat(logits)
            scale = self.strides[0] // MASK_LOSS_STRIDE
            pred = F.interpolate(pred[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]
            start = MASK_LOSS_STRIDE // 2
            gt = torch.cat(gts)[:, start::MASK_LOSS_STRIDE, start::MASK_LOSS_STRIDE].float().gt(0.5).float()
            return dice_loss(pred, gt).sum() / max(pred.shape[0], 1) + zero

    def postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.05,
                    nms_iou: float = 0.6, max_det: int = 100,
                    scale_factors: Sequence[float] | None = None) -> list[Detections]:
        """Detections with ``masks`` (``K×h×w`` bool at original image size, mask threshold 0.5)."""
        boxes, scores = self.decode(outputs)
        input_hw = self._input_hw(outputs)
        if scale_factors is None:
            scale_factors = letterbox_scales(input_hw, image_sizes)
        priors = self._priors(outputs)
        kernels = _flatten_levels(outputs["kernel"]).float()
        results = []
        for b, (h, w) in enumerate(image_sizes):
            kb, ks, kl, idx = multiclass_nms(boxes[b], scores[b], score_thr, nms_iou, max_det, pre_nms_topk=1000)
            masks = self._paste_masks(outputs["mask_feat"][b].float(), kernels[b, idx], priors[idx],
                                      (int(h), int(w)), float(scale_factors[b]), input_hw)
            kb = clip_boxes(kb / scale_factors[b], (int(h), int(w)))
            results.append(Detections(kb, ks, kl, masks))
        return results

    def _paste_masks(self, mask_feat: Tensor, kernels: Tensor, priors: Tensor, image_hw: tuple[int, int],
                     scale: float, input_hw: tuple[int, int]) -> Tensor:
        """Mask logits (stride 8) → ×8 bilinear to the input size → resize the whole (padded)
        canvas by ``1/scale`` → crop the original image (top-left) → σ > 0.5, as the reference.
        Returns ``K×h×w`` bool."""
        h, w = image_hw
        if kernels.shape[0] == 0:
            return torch.zeros((0, h, w), dtype=torch.bool, device=mask_feat.device)
        logits = dynamic_mask_logits(mask_feat, kernels, priors, self.strides[0])
        logits = F.interpolate(logits[None], size=input_hw, mode="bilinear", align_corners=False)
        size = (max(math.ceil(input_hw[0] / scale), h), max(math.ceil(input_hw[1] / scale), w))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0, :, :h, :w]
        return logits.sigmoid() > 0.5


register_variants(RTMDetIns, "rtmdet_ins", "rtmdet_ins", "RTMDet-Ins")
