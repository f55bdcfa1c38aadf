"""DynamicSoftLabelAssigner (RTMDet §3.2) on hand-built cases."""
import math

import pytest
import torch

from detmodels.assigners import DynamicSoftLabelAssigner, mask_center_of_mass


def _grid_priors(n: int = 4, stride: int = 8) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(n) * stride, torch.arange(n) * stride, indexing="ij")
    return torch.stack((xs.reshape(-1), ys.reshape(-1), torch.full((n * n,), stride)), 1).float()


def test_one_obvious_best_prior():
    priors = _grid_priors()  # points 0, 8, 16, 24 in x and y
    gt = torch.tensor([[4.0, 4.0, 20.0, 20.0]])  # strictly contains points (8|16, 8|16)
    boxes = torch.cat((priors[:, :2] - 1, priors[:, :2] + 1), 1)  # tiny boxes, IoU ≈ 0
    best = 5  # point (8, 8)
    boxes[best] = gt[0]
    res = DynamicSoftLabelAssigner().assign(torch.zeros(16, 3), boxes, priors, gt, torch.tensor([2]))
    assert res.gt_index.tolist() == [-1] * 5 + [0] + [-1] * 10  # k = int(1 + small IoUs) = 1
    assert res.metrics[best].item() == pytest.approx(1.0, abs=1e-6)
    assert res.metrics.sum().item() == pytest.approx(1.0, abs=1e-6)


def _tradeoff_case():
    """Prior A sits on the GT centre with IoU 0.5; prior B is 2 strides away with IoU 0.9.

    cost = 0.693·(IoU − 0.5)² + 3·(−ln IoU) + α^(d − β):
      A = 2.079 + α^(−β),  B = 0.427 + α^(2 − β).
    """
    priors = torch.tensor([[16.0, 16.0, 8.0], [32.0, 16.0, 8.0], [100.0, 100.0, 8.0]])
    gt = torch.tensor([[-4.0, 8.0, 36.0, 24.0]])  # centre (16, 16), area 640
    boxes = torch.tensor([[-4.0, 8.0, 16.0, 24.0],    # IoU 320/640 = 0.5
                          [-4.0, 8.0, 32.0, 24.0],    # IoU 576/640 = 0.9
                          [90.0, 90.0, 110.0, 110.0]])
    return torch.zeros(3, 1), boxes, priors, gt, torch.tensor([0])


@pytest.mark.parametrize("alpha, beta, winner", [
    (10.0, 3.0, 1),   # defaults: B 0.427 + 0.1 < A 2.079
    (10.0, 1.0, 0),   # small radius: B pays 10^1 = 10 → A wins
    (2.0, 1.0, 1),    # same radius, base 2: B 0.427 + 2 = 2.43 < A 2.079 + 0.5 = 2.58
])
def test_alpha_beta_change_the_winner(alpha, beta, winner):
    res = DynamicSoftLabelAssigner(soft_center_alpha=alpha, soft_center_beta=beta).assign(*_tradeoff_case())
    expected = [-1, -1, -1]
    expected[winner] = 0
    assert res.gt_index.tolist() == expected
    assert res.metrics[winner].item() == pytest.approx([0.5, 0.9][winner], abs=1e-5)


def test_cost_values_match_formula():
    a = DynamicSoftLabelAssigner(soft_center_alpha=2.0, soft_center_beta=1.0)
    logits, boxes, priors, gt, labels = _tradeoff_case()
    cost, ious = a._cost(logits[:2], boxes[:2], priors[:2], gt, labels, None)
    for i, (iou, d) in enumerate([(0.5, 0.0), (0.9, 2.0)]):
        expected = math.log(2) * (iou - 0.5) ** 2 - 3 * math.log(iou + 1e-7) + 2.0 ** (d - 1.0)
        assert cost[i, 0].item() == pytest.approx(expected, rel=1e-5)
        assert ious[i, 0].item() == pytest.approx(iou, rel=1e-5)


def test_dynamic_k_and_conflicts():
    # Two GT boxes sharing candidate priors: each prior keeps only its cheapest GT; k from IoU sums.
    priors = _grid_priors()
    gts = torch.tensor([[2.0, 2.0, 30.0, 30.0], [2.0, 2.0, 14.0, 30.0]])
    boxes = gts[0].expand(16, 4).clone()  # every prediction equals GT 0 (IoU 1 with it)
    res = DynamicSoftLabelAssigner().assign(torch.zeros(16, 2), boxes, priors, gts, torch.tensor([0, 1]))
    inside0 = [5, 6, 7, 9, 10, 11, 13, 14, 15]  # points with 2 < x, y < 30 (x, y in 8, 16, 24)
    # GT 0: k = int(9 × 1.0) = 9 → all its 9 candidates; GT 1's candidates (x = 8) are cheaper for GT 0.
    assert sorted(res.positive.nonzero().flatten().tolist()) == inside0
    assert set(res.gt_index[inside0].tolist()) == {0}


def test_candidates_inside_any_box_or_only_their_box():
    priors = torch.tensor([[8.0, 8.0, 8.0], [40.0, 8.0, 8.0]])
    gts = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 0.0, 48.0, 16.0]])
    boxes = torch.stack((gts[1], gts[0]))  # each prior predicts the *other* box perfectly
    args = (torch.zeros(2, 1), boxes, priors, gts, torch.tensor([0, 0]))
    # reference rule: inside any GT box makes a candidate for all GTs → the IoU cost wins
    assert DynamicSoftLabelAssigner().assign(*args).gt_index.tolist() == [1, 0]
    # restricted: a prior outside box g is never matched to g
    assert DynamicSoftLabelAssigner(restrict_to_box=True).assign(*args).gt_index.tolist() == [0, 1]


def test_empty_gt_and_no_candidates():
    a = DynamicSoftLabelAssigner()
    priors = _grid_priors()
    boxes = torch.cat((priors[:, :2] - 1, priors[:, :2] + 1), 1)
    res = a.assign(torch.zeros(16, 1), boxes, priors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (res.gt_index == -1).all() and (res.metrics == 0).all()
    far = torch.tensor([[200.0, 200.0, 220.0, 220.0]])
    res = a.assign(torch.zeros(16, 1), boxes, priors, far, torch.tensor([0]))
    assert (res.gt_index == -1).all()


def test_mask_center_of_mass_moves_the_centre_prior():
    masks = torch.zeros(1, 8, 8)
    masks[0, 1:3, 5:8] = 1  # centre of mass x = 6, y = 1.5
    assert mask_center_of_mass(masks)[0].tolist() == pytest.approx([6.0, 1.5])
    logits, boxes, priors, gt, labels = _tradeoff_case()
    # with the centre at B's point, B is also the nearest: it wins even with a small radius
    res = DynamicSoftLabelAssigner(soft_center_beta=1.0).assign(
        logits, boxes, priors, gt, labels, gt_centers=torch.tensor([[32.0, 16.0]]))
    assert res.gt_index.tolist() == [-1, 0, -1]
