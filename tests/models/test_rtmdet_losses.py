"""RTMDet losses against hand-computed values: QFL, GIoU, Dice, and the loss normalisation."""
import math
import pytest
import torch

import detmodels
from detmodels.ops import dice_loss, iou_loss, quality_focal_loss


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_quality_focal_loss_hand_computed():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    labels = torch.tensor([1, 2])  # row 0: class 1 with IoU 0.5; row 1: background (label == C)
    scores = torch.tensor([0.5, 0.0])
    loss = quality_focal_loss(logits, labels, scores, beta=2.0)
    expected = torch.tensor([
        [math.log(2) * 0.25, (_softplus(1.0) - 0.5) * (0.5 - _sig(1.0)) ** 2],  # BCE(x, y)·|y − σ|²
        [_softplus(2.0) * _sig(2.0) ** 2, _softplus(-1.0) * _sig(-1.0) ** 2],
    ])
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    assert expected[0, 0].item() == pytest.approx(0.173287, abs=1e-6)


@pytest.mark.parametrize("pred, target, expected", [
    ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], 1 - (1 / 7 - 2 / 9)),  # IoU 1/7, enclosing 9, union 7
    ([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], 1 + 7 / 9),            # disjoint: GIoU = −(9 − 2)/9
    ([1.0, 2.0, 5.0, 6.0], [1.0, 2.0, 5.0, 6.0], 0.0),
])
def test_giou_loss_hand_computed(pred, target, expected):
    assert iou_loss(torch.tensor([pred]), torch.tensor([target]), "giou")[0].item() == pytest.approx(expected, abs=1e-6)


def test_dice_loss_hand_computed():
    logits = torch.zeros(2, 2, 2)
    logits[1] = torch.tensor([[30.0, 30.0], [-30.0, -30.0]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]] * 2)
    loss = dice_loss(logits, target, eps=5e-6)
    # p = 0.5 everywhere: 1 − 2·1 / (1 + 2 + 2·eps); perfect prediction: 1 − 4 / (2 + 2 + 2·eps)
    assert loss[0].item() == pytest.approx(1 - 2 / (3 + 1e-5), abs=1e-6)
    assert loss[1].item() == pytest.approx(1 - 4 / (4 + 1e-5), abs=1e-7)


def test_rtmdet_loss_normalisation():
    """One prior predicts the GT exactly (IoU 1, k = 1): GIoU loss 0, QFL summed over all
    priors and divided by the sum of IoU metrics (1)."""
    model = detmodels.create_model("rtmdet_tiny", num_classes=1)
    sizes, logit = [(8, 8), (4, 4), (2, 2)], -2.0
    cls = [torch.full((1, 1, h, w), logit) for h, w in sizes]
    box = [torch.zeros(1, 4, h, w) for h, w in sizes]
    box[0][0, :, 2, 3] = torch.tensor([4.0, 6.0, 8.0, 10.0])  # prior (24, 16) → box (20, 10, 32, 26)
    targets = [{"boxes": torch.tensor([[20.0, 10.0, 32.0, 26.0]]), "labels": torch.tensor([0])}]
    losses = model.loss({"cls": cls, "box": box}, targets)
    num_priors = 64 + 16 + 4
    neg = _softplus(logit) * _sig(logit) ** 2
    pos = (_softplus(logit) - logit) * (1 - _sig(logit)) ** 2
    assert losses["loss_cls"].item() == pytest.approx((num_priors - 1) * neg + pos, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-5)
    assert set(losses) == {"loss_cls", "loss_bbox"}
