"""YOLOv6 self-distillation (YOLOv6 v3.0, arXiv 2301.05586, "Self-Distillation"): KL divergence at temperature T on
the class scores and on the DFL box distributions, cosine-decayed weight α(e), optional channel-wise
feature distillation, and Decoupled Localization Distillation (DLD) for the N/S students.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..base import Detector
from ..structures import Target
from .yolov6_loss import LOSS_WEIGHTS, flatten_levels

__all__ = ["cosine_distill_weight", "yolov6_distill_loss", "kl_at_temperature", "channel_wise_distill"]

FEATURE_KD_WEIGHT = 10.0


def cosine_distill_weight(epoch: int, epochs: int, final: float = 0.01) -> float:
    """α(e) = 1 − (1 − final)·(1 − cos(π·e/E))/2: 1 at the first epoch, ``final`` at the last."""
    return 1.0 - (1.0 - final) * (1.0 - math.cos(math.pi * epoch / max(epochs, 1))) / 2.0


def kl_at_temperature(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Row-wise KL(softmax(t/T) ‖ softmax(s/T)) for ``P×K`` inputs → ``P`` (teacher detached).

    At T = 20 the two distributions are nearly equal and float32 loses the difference to cancellation
    (0.05 % on a YOLOv6 class term), so the divergence is computed in float64.
    """
    log_p_s = F.log_softmax(student.double() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher.detach().double() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1).to(student.dtype)


def channel_wise_distill(student: Sequence[Tensor], teacher: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation (Shu et al. 2021): per channel, KL between spatial softmaxes, / (N·C)."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        n, c = s.shape[:2]
        kl = kl_at_temperature(s.flatten(2), t.flatten(2), temperature).sum()
        total = total + kl * temperature**2 / (n * c)
    return total


def _distributions(outputs: dict, reg_max: int) -> tuple[Tensor, int] | None:
    """Flattened DFL logits ``B×A×4(R+1)`` and R: the DLD branch if present, else a DFL ``box`` map."""
    if "box_dfl" in outputs:
        maps = outputs["box_dfl"]
    elif outputs["box"][0].shape[1] > 4:
        maps = outputs["box"]
    else:
        return None
    return flatten_levels(maps), maps[0].shape[1] // 4 - 1


def yolov6_distill_loss(model: Detector, student: dict, teacher: dict, targets: Sequence[Target],
                        weight: float = 1.0) -> dict[str, Tensor]:
    """KD terms of YOLOv6 (student in training mode, teacher outputs of the same layout).

    ``model`` is the student YOLOv6 (its ``distill_temperature``, ``distill_class_weight``, ``reg_max``,
    ``criterion`` and ``_epoch`` are read; this module does not import ``yolov6``, which imports it).

    * ``loss_kd_cls``: Σ over priors of KL at T between softmaxes (over classes) of the *sigmoid*
      class scores, ×T², × the size's class weight (1.0 N/S, 0.8 M, 2.0 L), × ``weight``.
    * ``loss_kd_dfl``: KL at T of the DFL distributions at the student's positives (mean over sides)
      ×T², weighted like the DFL loss, × 0.5 × ``weight``; zero when either side lacks DFL logits.
    * ``loss_kd_feat`` (both outputs carry ``feats``): channel-wise KD × 10 × ``weight``.
    """
    t = model.distill_temperature
    s_cls, t_cls = flatten_levels(student["cls"]), flatten_levels(teacher["cls"])
    kd_cls = kl_at_temperature(s_cls.sigmoid().flatten(0, 1), t_cls.sigmoid().flatten(0, 1), t).sum() * t**2
    losses = {"loss_kd_cls": weight * model.distill_class_weight * LOSS_WEIGHTS["cls"] * kd_cls}
    s_dist, t_dist = _distributions(student, model.reg_max), _distributions(teacher, model.reg_max)
    if s_dist is not None and t_dist is not None and s_dist[1] == t_dist[1]:
        res, _ = model.criterion.assign_outputs(student, targets, model._epoch)
        pos, bins = res.fg_mask, s_dist[1] + 1
        if pos.any():
            kl = kl_at_temperature(s_dist[0][pos].reshape(-1, bins), t_dist[0][pos].reshape(-1, bins), t)
            w = res.scores.sum(-1)[pos]
            tss = res.scores.sum()
            kd_dfl = kl.mean() * t**2 * w.sum()
            kd_dfl = kd_dfl / tss if tss > 0 else kd_dfl
        else:
            kd_dfl = s_dist[0].sum() * 0.0
        losses["loss_kd_dfl"] = weight * LOSS_WEIGHTS["dfl"] * kd_dfl
    else:
        losses["loss_kd_dfl"] = s_cls.sum() * 0.0
    if "feats" in student and "feats" in teacher:
        losses["loss_kd_feat"] = weight * FEATURE_KD_WEIGHT * channel_wise_distill(student["feats"], teacher["feats"])
    return losses
