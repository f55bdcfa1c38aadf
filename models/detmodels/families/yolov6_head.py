"""YOLOv6's Efficient Decoupled Head (YOLOv6 v3.0, arXiv 2301.05586, "Network Design"), with the training-only
anchor-aided predictors ("Anchor-Aided Training") and the auxiliary DFL branch of Decoupled Localization
Distillation (DLD, "Self-Distillation"). Both auxiliaries are removed by :meth:`drop_training_branches`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..layers import ConvNormAct
from ..layers.init import prior_bias

__all__ = ["EfficientDecoupledHead", "SEED_ANCHORS"]

# YOLOv6 ``anchors_init``: (w, h) pairs per level in input pixels, 3 anchors per level.
SEED_ANCHORS = (
    ((10, 13), (19, 19), (33, 23)),
    ((30, 61), (59, 59), (59, 119)),
    ((116, 90), (185, 185), (373, 326)),
)
_PRIOR_PROB = 0.01


def _preds(channels: Sequence[int], out: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Conv2d(c, out, 1) for c in channels)


class EfficientDecoupledHead(nn.Module):
    """Per level (not shared): 1×1 stem → {3×3 cls conv → 1×1 cls pred; 3×3 reg conv → 1×1 reg pred}.

    Args:
        in_channels: neck channels per level (P3, P4, P5).
        num_classes: ``C``.
        reg_max: DFL bins − 1; the box map has ``4·(reg_max+1)`` channels (4 = plain l,t,r,b).
        anchor_aided: add the AAT predictors (``3·C`` and ``3·4`` channels) used in training only.
        dld: add the auxiliary DFL predictor (``4·(dld_reg_max+1)`` channels), training only.

    Output (dict of per-level lists, ``N×K×H×W``, pre-activation): ``cls`` (K=C), ``box``
    (K=4(reg_max+1), distances in stride units or DFL logits); in training mode also ``cls_ab``/``box_ab``
    (AAT) and ``box_dfl`` (DLD).
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, reg_max: int = 16, *,
        anchor_aided: bool = False, dld: bool = False, dld_reg_max: int = 16, num_anchors_ab: int = 3,
    ):
        super().__init__()
        bn = {"bn_eps": 1e-3, "bn_momentum": 0.03, "act": "silu"}
        self.num_classes, self.reg_max, self.dld_reg_max = num_classes, reg_max, dld_reg_max
        self.num_anchors_ab = num_anchors_ab
        self.stems = nn.ModuleList(ConvNormAct(c, c, 1, **bn) for c in in_channels)
        self.cls_convs = nn.ModuleList(ConvNormAct(c, c, 3, **bn) for c in in_channels)
        self.reg_convs = nn.ModuleList(ConvNormAct(c, c, 3, **bn) for c in in_channels)
        self.cls_preds = _preds(in_channels, num_classes)
        self.reg_preds = _preds(in_channels, 4 * (reg_max + 1))
        self.cls_preds_ab = _preds(in_channels, num_classes * num_anchors_ab) if anchor_aided else None
        self.reg_preds_ab = _preds(in_channels, 4 * num_anchors_ab) if anchor_aided else None
        self.reg_preds_dfl = _preds(in_channels, 4 * (dld_reg_max + 1)) if dld else None
        self.emit_dld_in_eval = False  # a distillation teacher's DLD branch (YOLOv6.as_teacher)
        self.init_predictors()

    @property
    def anchor_aided(self) -> bool:
        return self.cls_preds_ab is not None

    @property
    def dld(self) -> bool:
        return self.reg_preds_dfl is not None

    @torch.no_grad()
    def init_predictors(self) -> None:
        """Every 1×1 predictor: weight 0; class bias −log((1−π)/π) with π = 0.01 (≈ −4.595), box bias 1.0.

        As ``Detect.initialize_biases`` of meituan/YOLOv6 ``yolov6/models/effidehead.py`` (and of
        ``yolov6/models/heads/effidehead_fuseab.py`` for the AAT predictors, ``…/effidehead_distill_ns.py``
        for the DLD branch). The stem/cls/reg ConvBNSiLU keep PyTorch's conv default (the reference's
        ``initialize_weights`` leaves ``nn.Conv2d`` untouched); their BN is eps 1e-3, momentum 0.03.
        """
        cls_bias = prior_bias(_PRIOR_PROB)
        for group, bias in ((self.cls_preds, cls_bias), (self.reg_preds, 1.0), (self.cls_preds_ab, cls_bias),
                            (self.reg_preds_ab, 1.0), (self.reg_preds_dfl, 1.0)):
            for conv in group or ():
                conv.weight.zero_()
                conv.bias.fill_(bias)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        out: dict[str, list[Tensor]] = {"cls": [], "box": []}
        aux = self.training
        if aux and self.anchor_aided:
            out["cls_ab"], out["box_ab"] = [], []
        if self.dld and (aux or self.emit_dld_in_eval):
            out["box_dfl"] = []
        for i, x in enumerate(feats):
            x = self.stems[i](x)
            cls_feat, reg_feat = self.cls_convs[i](x), self.reg_convs[i](x)
            out["cls"].append(self.cls_preds[i](cls_feat))
            out["box"].append(self.reg_preds[i](reg_feat))
            if "cls_ab" in out:
                out["cls_ab"].append(self.cls_preds_ab[i](cls_feat))
                out["box_ab"].append(self.reg_preds_ab[i](reg_feat))
            if "box_dfl" in out:
                out["box_dfl"].append(self.reg_preds_dfl[i](reg_feat))
        return out

    def drop_training_branches(self) -> None:
        """Remove the AAT and DLD predictors (deploy form; inference never used them)."""
        self.cls_preds_ab = self.reg_preds_ab = self.reg_preds_dfl = None
