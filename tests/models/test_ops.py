"""Box utilities against hand-computed values, and torch NMS against a brute-force reference."""
import math

import pytest
import torch

from detmodels import ops

A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])


def test_conversions_round_trip():
    b = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert torch.equal(ops.box_cxcywh_to_xyxy(ops.box_xyxy_to_cxcywh(b)), b)
    assert torch.equal(ops.box_xywh_to_xyxy(ops.box_xyxy_to_xywh(b)), b)
    assert ops.box_xyxy_to_cxcywh(b).tolist() == [[3.0, 6.0, 4.0, 8.0]]


def test_iou_giou_diou_hand_computed():
    # intersection 1, union 7, enclosing box 3x3 = 9
    assert ops.pairwise_iou(A, B).item() == pytest.approx(1 / 7)
    assert ops.aligned_iou(A, B).item() == pytest.approx(1 / 7)
    assert ops.aligned_giou(A, B).item() == pytest.approx(1 / 7 - (9 - 7) / 9)
    # centres (1,1) and (2,2): rho^2 = 2; diagonal^2 = 18
    assert ops.aligned_diou(A, B).item() == pytest.approx(1 / 7 - 2 / 18)


def test_ciou_equals_diou_for_same_aspect_ratio():
    # identical aspect ratios → v = 0 → CIoU == DIoU
    assert ops.aligned_ciou(A, B).item() == pytest.approx(ops.aligned_diou(A, B).item(), abs=1e-6)
    c = torch.tensor([[1.0, 1.0, 5.0, 3.0]])  # 4x2 box, same centre offset family
    v = 4 / math.pi**2 * (math.atan(4 / 2) - math.atan(1.0)) ** 2
    iou = ops.aligned_iou(A, c).item()
    alpha = v / (1 - iou + v)
    expected = ops.aligned_diou(A, c).item() - alpha * v
    assert ops.aligned_ciou(A, c).item() == pytest.approx(expected, abs=1e-6)


def test_siou_identical_boxes_is_one_and_bounded():
    assert ops.aligned_siou(A, A).item() == pytest.approx(1.0, abs=1e-5)
    assert ops.aligned_siou(A, B).item() < ops.aligned_iou(A, B).item()


def test_distance_box_round_trip():
    pts = torch.tensor([[5.0, 5.0]])
    box = torch.tensor([[1.0, 2.0, 9.0, 7.0]])
    d = ops.bbox2distance(pts, box)
    assert d.tolist() == [[4.0, 3.0, 4.0, 2.0]]
    assert torch.equal(ops.distance2bbox(pts, d), box)


def _brute_force_nms(boxes, scores, idxs, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if idxs[i] == idxs[j] and ops.pairwise_iou(boxes[i : i + 1], boxes[j : j + 1]).item() > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_batched_nms_matches_brute_force(seed, thr):
    g = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 3, (n,), generator=g)
    got = ops.batched_nms(boxes, scores, idxs, thr).tolist()
    assert got == _brute_force_nms(boxes, scores, idxs, thr)


def test_blockwise_nms_across_blocks_and_max_keep_match_brute_force():
    from detmodels.ops.nms import _nms_torch

    g = torch.Generator().manual_seed(7)
    n = 300
    xy = torch.rand(n, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 2], 1)
    scores = torch.rand(n, generator=g)
    ref = _brute_force_nms(boxes, scores, [0] * n, 0.5)
    assert _nms_torch(boxes, scores, 0.5, block=16).tolist() == ref  # many blocks
    assert _nms_torch(boxes, scores, 0.5, max_keep=7, block=16).tolist() == ref[:7]
    idxs = torch.randint(0, 4, (n,), generator=g)
    assert ops.batched_nms(boxes, scores, idxs, 0.5, max_keep=11).tolist() == \
        _brute_force_nms(boxes, scores, idxs, 0.5)[:11]


def test_nms_empty_and_class_separation():
    assert ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8])
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]


def test_dense_postprocess_rescales_and_limits():
    boxes = torch.tensor([[[0.0, 0, 20, 20], [100, 100, 140, 160], [1, 1, 21, 21]]])
    scores = torch.tensor([[[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]]])
    (det,) = ops.dense_postprocess(boxes, scores, (200, 200), [(100, 100)], score_thr=0.5, nms_iou=0.5, max_det=10)
    assert det.labels.tolist() == [0, 1]
    # scale = min(200/100, 200/100) = 2 → boxes halved then clipped to 100×100
    assert det.boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 80.0]]
