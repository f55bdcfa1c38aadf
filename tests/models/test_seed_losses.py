"""Seed-document losses against hand-computed values: sigmoid focal loss (RetinaNet §3) and the
IoU-family box losses (CIoU, DIoU, GIoU, IoU)."""
from __future__ import annotations

import math

import pytest
import torch

from detmodels.ops import iou_loss, sigmoid_focal_loss


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("logit,target,alpha,gamma,want", [
    # p = σ(0) = ½, positive: 0.25 · (½)^2 · ln 2
    (0.0, 1.0, 0.25, 2.0, 0.25 * 0.25 * math.log(2)),
    # negative with logit 2: (1 − α) · p^γ · (−ln(1 − p)), p = σ(2) = 0.880797
    (2.0, 0.0, 0.25, 2.0, 0.75 * _sigmoid(2.0) ** 2 * -math.log(1 - _sigmoid(2.0))),
    # SpineNet setting γ = 1.5, positive with logit −1: 0.25 · (1 − σ(−1))^1.5 · (−ln σ(−1))
    (-1.0, 1.0, 0.25, 1.5, 0.25 * (1 - _sigmoid(-1.0)) ** 1.5 * -math.log(_sigmoid(-1.0))),
    # α < 0 disables balancing: γ = 0 gives plain BCE
    (1.0, 0.0, -1.0, 0.0, -math.log(1 - _sigmoid(1.0))),
])
def test_sigmoid_focal_loss_hand_cases(logit, target, alpha, gamma, want):
    got = sigmoid_focal_loss(torch.tensor([logit], dtype=torch.float64), torch.tensor([target], dtype=torch.float64),
                             alpha, gamma)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_focal_loss_numbers_written_out():
    got = sigmoid_focal_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]), 0.25, 2.0)
    torch.testing.assert_close(got, torch.tensor([0.043321698, 1.2375587]), rtol=1e-5, atol=1e-6)


def test_focal_loss_down_weights_easy_examples():
    easy, hard = sigmoid_focal_loss(torch.tensor([4.0, -4.0]), torch.tensor([1.0, 1.0]), 0.25, 2.0)
    assert float(easy) < 1e-4 * float(hard)


# Case A: (0,0,2,2) vs (1,1,3,3): IoU 1/7, enclosing 3×3 (diag² 18), centre distance² 2, same aspect.
# Case B: (0,0,4,2) vs (0,0,2,2): IoU ½, enclosing 4×2 (diag² 20), centre distance² 1,
#         v = 4/π²·(atan(1) − atan(2))², α = v / (1 − IoU + v).
_V_B = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
_CIOU_B = 0.5 - 1 / 20 - _V_B / (0.5 + _V_B) * _V_B


@pytest.mark.parametrize("kind,want_a,want_b", [
    ("iou", 1 - 1 / 7, 0.5),
    ("giou", 1 - (1 / 7 - 2 / 9), 0.5),
    ("diou", 1 - (1 / 7 - 2 / 18), 1 - 0.45),
    ("ciou", 1 - (1 / 7 - 2 / 18), 1 - _CIOU_B),
])
def test_iou_losses_hand_cases(kind, want_a, want_b):
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 4, 2]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2]], dtype=torch.float64)
    got = iou_loss(pred, target, kind, eps=1e-12)
    torch.testing.assert_close(got, torch.tensor([want_a, want_b], dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_ciou_value_written_out_and_gradient():
    pred = torch.tensor([[0.0, 0, 4, 2]], requires_grad=True)
    loss = iou_loss(pred, torch.tensor([[0.0, 0, 2, 2]]), "ciou")
    assert float(loss.detach()) == pytest.approx(0.553248, abs=1e-5)
    loss.sum().backward()
    assert float(pred.grad[0, 2]) > 0  # shrinking the too-wide box lowers the loss


def test_unknown_iou_kind_rejected():
    with pytest.raises(ValueError, match="unknown IoU loss 'eiou'"):
        iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), "eiou")
