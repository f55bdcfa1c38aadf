"""TaskAlignedAssigner and ATSSAssigner against hand-computed assignments."""
import pytest
import torch

from detmodels.assigners import ATSSAssigner, TaskAlignedAssigner

GT_BOX = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]])  # 1 image, 1 GT
GT_LABEL = torch.tensor([[1]])
GT_MASK = torch.tensor([[True]])


def _tal_inputs():
    points = torch.tensor([[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [20.0, 20.0]])
    # IoU with the GT: 1, 1/2, 1/4, and 1 for a prior outside the GT (never positive)
    pd_boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 4.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 8.0, 8.0]]])
    pd_scores = torch.full((1, 4, 2), 0.5)
    return pd_scores, pd_boxes, points


def test_tal_topk_and_normalised_scores():
    pd_scores, pd_boxes, points = _tal_inputs()
    res = TaskAlignedAssigner(num_classes=2, topk=2)(pd_scores, pd_boxes, points, GT_LABEL, GT_BOX, GT_MASK)
    # t = s·IoU^6 = 0.5, 0.5/64, 0.5/4096 inside; top-2 → priors 0 and 1
    assert res.fg_mask.tolist() == [[True, True, False, False]]
    assert res.labels.tolist() == [[1, 1, 2, 2]]  # background = num_classes
    # normalised by the best t of the GT and scaled by the best IoU among its positives (1.0)
    assert res.scores[0, :, 1].tolist() == pytest.approx([1.0, 1 / 64, 0.0, 0.0])
    assert res.scores[0, :, 0].abs().sum() == 0
    assert torch.equal(res.boxes[0, 0], GT_BOX[0, 0])


def test_tal_alpha_beta_change_the_ranking():
    pd_scores, pd_boxes, points = _tal_inputs()
    pd_scores[0, 2, 1] = 1.0  # the IoU-1/4 prior is now the most confident
    pd_scores[0, 1, 1] = 0.01
    res = TaskAlignedAssigner(num_classes=2, topk=2, alpha=1.0, beta=0.0)(
        pd_scores, pd_boxes, points, GT_LABEL, GT_BOX, GT_MASK)
    assert res.fg_mask.tolist() == [[True, False, True, False]]  # β = 0: ranked by score only


def test_tal_prior_claimed_by_two_gts_keeps_higher_iou():
    points = torch.tensor([[4.0, 4.0]])
    gt = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 10.0, 6.0]]])
    pd = torch.tensor([[[2.0, 2.0, 10.0, 6.0]]])  # IoU 1 with GT 1, 16/80 with GT 0
    res = TaskAlignedAssigner(num_classes=3, topk=1)(
        torch.full((1, 1, 3), 0.5), pd, points, torch.tensor([[0, 2]]), gt, torch.tensor([[True, True]]))
    assert res.labels.tolist() == [[2]] and torch.equal(res.boxes[0, 0], gt[0, 1])


def test_tal_ignores_padding_and_handles_no_gt():
    pd_scores, pd_boxes, points = _tal_inputs()
    res = TaskAlignedAssigner(num_classes=2, topk=2)(
        pd_scores, pd_boxes, points, GT_LABEL, GT_BOX, torch.tensor([[False]]))
    assert not res.fg_mask.any() and res.scores.sum() == 0
    empty = TaskAlignedAssigner(num_classes=2)(pd_scores, pd_boxes, points, torch.zeros(1, 0, dtype=torch.long),
                                               torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))
    assert empty.labels.tolist() == [[2, 2, 2, 2]]


def test_atss_mean_plus_std_threshold():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                            [0.0, 5.0, 10.0, 15.0]])
    # IoUs 1, 1/3, 0, 1/3: mean 5/12, unbiased std 0.4194 → threshold 0.836 → only anchor 0
    pd = torch.tensor([[[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    res = ATSSAssigner(num_classes=2, topk=9)(anchors, [4], torch.tensor([[0]]), gt, torch.tensor([[True]]), pd)
    assert res.fg_mask.tolist() == [[True, False, False, False]]
    assert res.labels.tolist() == [[0, 2, 2, 2]]
    assert res.scores[0, 0].tolist() == pytest.approx([0.5, 0.0])  # soft label = IoU(prediction, GT)


def test_atss_topk_is_per_level():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    # level 0: two anchors; level 1: three, of which only the two closest are candidates with topk=2
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0],
                            [-1.0, -1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0], [60.0, 60.0, 70.0, 70.0]])
    atss = ATSSAssigner(num_classes=1, topk=2)
    dist = torch.tensor([[[0.0, 56.6, 0.0, 42.4, 84.9]]])
    assert atss._candidate_index(dist, [2, 3]).tolist() == [[[0, 1, 2, 3]]]
    res = atss(anchors, [2, 3], torch.tensor([[0]]), gt, torch.tensor([[True]]))
    # candidate IoUs 1, 0, 100/144, 0: threshold mean + std = 0.424 + 0.505 → only anchor 0
    assert res.fg_mask.tolist() == [[True, False, False, False, False]]
    assert res.scores[0, 0, 0].item() == 1.0  # no predictions given: hard label
