"""RTMDet-Ins (arXiv 2212.07784, §3.3): RTMDet plus dynamic-kernel instance masks.

Builds ``rtmdet_ins_{tiny,s,m,l,x}`` (listed in :mod:`detmodels.catalog`); options are RTMDet's (:class:`RTMDetOptions`, whose
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
from ..ops import clip_boxes, dice_loss, float32_guard, letterbox_scales, multiclass_nms
from ..structures import Detections, Target
from .rtmdet import RTMDet, RTMDetConfig, _flatten_levels, build_rtmdet
from .rtmdet_heads import RTMDetInsSepBNHead, dynamic_mask_logits, make_priors
from .rtmdet_options import RTMDetOptions

__all__ = ["RTMDetIns", "build_rtmdet_ins", "dense_instance_postprocess", "paste_instance_masks", "instance_strides",
           "INSTANCE_OUTPUT_NAMES"]

MASK_LOSS_STRIDE = 4
MASK_THR = 0.5
#: Output names of an exported RTMDet-Ins graph (see ``RTMDetIns.deploy_decode``).
INSTANCE_OUTPUT_NAMES = ("boxes", "scores", "mask_kernels", "mask_feat")


class RTMDetIns(RTMDet):
    """RTMDet-Ins instance segmentation (§3.3).

    ``forward`` adds ``"kernel"`` (``N×169×H_l×W_l`` per level) and ``"mask_feat"``
    (``N×8×H/8×W/8``). The assigner's centre prior uses each mask's centre of mass. Mask loss:
    Dice (weight 2, averaged over positives) between the positives' mask logits upsampled ×2 to
    stride 4 and the GT masks sampled every 4th pixel from offset 2.
    """

    task = "segm"
    deploy_output_names = INSTANCE_OUTPUT_NAMES

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

    @float32_guard
    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox", "loss_mask"}``, in float32 under autocast."""
        losses, (priors, gt_index, _) = self._det_loss(outputs, targets)
        losses["loss_mask"] = self.loss_weights["mask"] * self._mask_loss(outputs, targets, priors, gt_index)
        return losses

    def _mask_loss(self, outputs: RawOutputs, targets: Sequence[Target], priors: Tensor, gt_index: Tensor) -> Tensor:
        kernels = _flatten_levels(outputs["kernel"]).float()
        mask_feat = outputs["mask_feat"].float()
        logits, gts = [], []
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

    def deploy_decode(self, outputs: RawOutputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(boxes N×A×4, scores N×A×C, mask_kernels N×A×169, mask_feat N×8×H/8×W/8)``: the decoded
        boxes and scores plus what :func:`dense_instance_postprocess` needs to build the masks."""
        boxes, scores = self.decode(outputs)
        return boxes, scores, _flatten_levels(outputs["kernel"]).float(), outputs["mask_feat"].float()

    def postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.05,
                    nms_iou: float = 0.6, max_det: int = 100,
                    scale_factors: Sequence[float] | None = None) -> list[Detections]:
        """Detections with ``masks`` (``K×h×w`` bool at original image size, mask threshold 0.5):
        :meth:`deploy_decode`, then :func:`dense_instance_postprocess` (the step exported graphs use)."""
        return dense_instance_postprocess(*self.deploy_decode(outputs), self._input_hw(outputs), image_sizes,
                                          score_thr, nms_iou, max_det, scale_factors, strides=self.strides)

    def _paste_masks(self, mask_feat: Tensor, kernels: Tensor, priors: Tensor, image_hw: tuple[int, int],
                     scale: float, input_hw: tuple[int, int]) -> Tensor:
        """:func:`paste_instance_masks` at this model's mask stride."""
        return paste_instance_masks(mask_feat, kernels, priors, image_hw, scale, input_hw, self.strides[0])


def paste_instance_masks(mask_feat: Tensor, kernels: Tensor, priors: Tensor, image_hw: tuple[int, int],
                         scale: float, input_hw: tuple[int, int], mask_stride: int = 8,
                         mask_thr: float = MASK_THR) -> Tensor:
    """Masks of ``K`` kept instances of one image in original pixels (the letterbox undone).

    Mask logits (:func:`dynamic_mask_logits` of ``kernels`` ``K×169`` at ``priors`` ``K×3`` over
    ``mask_feat`` ``8×h×w``, stride ``mask_stride``) → bilinear to the input size → resize the whole
    (padded) canvas by ``1/scale`` → crop the original image (top-left) → σ > ``mask_thr``, as the
    reference. Returns ``K×H×W`` bool.
    """
    h, w = image_hw
    if kernels.shape[0] == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=mask_feat.device)
    logits = dynamic_mask_logits(mask_feat.float(), kernels.float(), priors, mask_stride)
    logits = F.interpolate(logits[None], size=input_hw, mode="bilinear", align_corners=False)
    size = (max(math.ceil(input_hw[0] / scale), h), max(math.ceil(input_hw[1] / scale), w))
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0, :, :h, :w]
    return logits.sigmoid() > mask_thr


def instance_strides(input_hw: tuple[int, int], mask_feat: Tensor, num_priors: int) -> tuple[int, ...]:
    """The prior strides of an instance graph's outputs: the mask stride ``s`` (input height / mask
    feature height) and its 2×, 4× (RTMDet-Ins' P3–P5), checked against the ``num_priors`` rows."""
    s = int(input_hw[0]) // int(mask_feat.shape[-2])
    strides = (s, 2 * s, 4 * s)
    if s <= 0 or sum((input_hw[0] // t) * (input_hw[1] // t) for t in strides) != num_priors:
        raise ValueError(f"instance outputs: {num_priors} priors do not match strides {strides} at input "
                         f"{tuple(input_hw)} (mask features {tuple(mask_feat.shape[-2:])})")
    return strides


def dense_instance_postprocess(
    boxes: Tensor, scores: Tensor, kernels: Tensor, mask_feat: Tensor, input_hw: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]], score_thr: float = 0.05, nms_iou: float = 0.6, max_det: int = 100,
    scale_factors: Sequence[float] | None = None, *, strides: Sequence[int] | None = None,
    pre_nms_topk: int = 1000, mask_thr: float = MASK_THR,
) -> list[Detections]:
    """RTMDet-Ins post-processing of deploy outputs (shared by ``RTMDetIns.postprocess`` and exported graphs).

    Args:
        boxes, scores: ``N×A×4`` (xyxy, input px), ``N×A×C`` probabilities (the graph's ``boxes``, ``scores``).
        kernels: ``N×A×169`` dynamic kernel parameters per prior (``mask_kernels``); mask_feat: ``N×8×h×w``
            mask prototypes (``mask_feat``).
        input_hw: network input size; image_sizes: original ``(h, w)`` per image; scale_factors: the
            letterbox scales (default: computed from the sizes).
        strides: prior strides (default: inferred by :func:`instance_strides`).
    Returns:
        One :class:`Detections` per image: class-aware NMS, boxes and ``masks`` (``K×h×w`` bool) in
        original pixels.
    """
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    if scale_factors is None:
        scale_factors = letterbox_scales(input_hw, image_sizes)
    if strides is None:
        strides = instance_strides(input_hw, mask_feat, boxes.shape[1])
    sizes = [(input_hw[0] // s, input_hw[1] // s) for s in strides]
    priors = make_priors(sizes, strides, boxes.device)
    results = []
    for b, (h, w) in enumerate(image_sizes):
        kb, ks, kl, idx = multiclass_nms(boxes[b].float(), scores[b].float(), score_thr, nms_iou, max_det,
                                         pre_nms_topk=pre_nms_topk)
        masks = paste_instance_masks(mask_feat[b], kernels[b, idx], priors[idx], (int(h), int(w)),
                                     float(scale_factors[b]), input_hw, int(strides[0]), mask_thr)
        kb = clip_boxes(kb / scale_factors[b], (int(h), int(w)))
        results.append(Detections(kb, ks, kl, masks))
    return results


def build_rtmdet_ins(size: str, num_classes: int = 80, *, options: RTMDetOptions | None = None) -> RTMDetIns:
    """Build RTMDet-Ins of ``size`` in tiny/s/m/l/x with typed ``options`` (see ``build_rtmdet``)."""
    return build_rtmdet(size, num_classes, options=options, model_cls=RTMDetIns)
