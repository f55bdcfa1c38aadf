"""bf16 autocast on CPU for every family: the forward runs in bf16, while label assignment, IoU and
the losses (and their reductions) run in float32 with autocast off (``detmodels.ops.float32_guard``).

The family test records, at the moment each assigner / IoU / loss entry point is *called*, whether
autocast is on and the dtype of its floating-point inputs: taking the guard off a family's ``loss``
makes it fail (the assigner is then reached with autocast on, YOLOv6's losses with bf16 logits).
The unit tests call every guarded public function directly under autocast with bf16 inputs:
taking the guard off one of them makes it return bf16 and fail.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import detmodels
from detmodels.assigners import atss, dynamic_soft_label, max_iou, task_aligned
from detmodels.families import rtmdet, rtmdet_ins, spinenet, yolov3_asff, yolov3_asff_loss, yolov6_loss
from detmodels.ops import boxes as box_ops
from detmodels.ops import losses as loss_ops
from detmodels.ops.precision import autocast_active, float32_guard, float32_region, to_float32

BF16 = torch.bfloat16


# ------------------------------------------------------------------ the helper
def test_float32_region_turns_autocast_off_and_back_on():
    assert autocast_active() == []
    with float32_region():  # no-op outside autocast
        assert autocast_active() == []
    with torch.autocast("cpu", dtype=BF16):
        assert autocast_active() == ["cpu"]
        with float32_region():
            assert autocast_active() == []
            assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32
        assert autocast_active() == ["cpu"]
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == BF16


def test_to_float32_casts_only_half_precision_tensors_in_nested_structures():
    half, full, idx = torch.ones(2, dtype=BF16), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.long)
    out = to_float32({"a": [half, (torch.ones(1, dtype=torch.float16), idx)], "b": full, "c": 3})
    assert out["a"][0].dtype == torch.float32 and out["a"][1][0].dtype == torch.float32
    assert out["a"][1][1] is idx and out["b"] is full and out["c"] == 3


def test_float32_guard_casts_arguments_and_keeps_the_gradient_path():
    seen = {}

    @float32_guard
    def f(x, *, y):
        seen["autocast"], seen["dtypes"] = autocast_active(), (x.dtype, y.dtype)
        return (x @ y).sum()

    x = torch.randn(3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        out = f(x.to(BF16), y=torch.randn(3, 3))
    assert seen == {"autocast": [], "dtypes": (torch.float32, torch.float32)} and out.dtype == torch.float32
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert f.__wrapped__ is not None and f.__name__ == "f"


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    return torch.cat((xy, xy + 20 + torch.rand(n, 2, generator=g) * 100), -1)


GUARDED_CALLS = {
    "pairwise_iou": lambda a, b: box_ops.pairwise_iou(a, b),
    "aligned_iou": lambda a, b: box_ops.aligned_iou(a, b),
    "aligned_giou": lambda a, b: box_ops.aligned_giou(a, b),
    "aligned_diou": lambda a, b: box_ops.aligned_diou(a, b),
    "aligned_ciou": lambda a, b: box_ops.aligned_ciou(a, b),
    "aligned_siou": lambda a, b: box_ops.aligned_siou(a, b),
    "iou_loss": lambda a, b: loss_ops.iou_loss(a, b, "siou"),
    "batched_pairwise_iou": lambda a, b: task_aligned.batched_pairwise_iou(a[None], b[None]),
    "cxcywh_iou": lambda a, b: yolov3_asff_loss.cxcywh_iou(a, b),
    "wh_iou": lambda a, b: yolov3_asff_loss._wh_iou(a[:, 2:], b[:, 2:]),
    "quality_focal_loss": lambda a, b: loss_ops.quality_focal_loss(a, torch.tensor([0, 2, 4, 1, 3, 0]), b[:, 0] / 600),
    "varifocal_loss": lambda a, b: loss_ops.varifocal_loss(a, b / 600, (b > 300).to(b.dtype)),
    "sigmoid_focal_loss": lambda a, b: loss_ops.sigmoid_focal_loss(a, (b > 300).to(b.dtype)),
    "dice_loss": lambda a, b: loss_ops.dice_loss(a, (b > 300).to(b.dtype)),
    "distribution_focal_loss": lambda a, b: loss_ops.distribution_focal_loss(a, b[:, 0] / 200),
    "huber_loss": lambda a, b: loss_ops.huber_loss(a / 600, b / 600),
}


@pytest.mark.parametrize("name", list(GUARDED_CALLS))
def test_guarded_ops_compute_in_float32_under_bf16_autocast(name):
    a, b = _boxes(6, 0), _boxes(6, 1)
    with torch.autocast("cpu", dtype=BF16):
        out = GUARDED_CALLS[name](a.to(BF16), b.to(BF16))
    assert out.dtype == torch.float32, f"{name} computed in {out.dtype} under autocast"
    torch.testing.assert_close(out, GUARDED_CALLS[name](a.to(BF16), b.to(BF16)))  # same as without autocast


def test_bf16_rounding_is_what_the_guard_avoids():
    """Why: a bf16 IoU of boxes 1 px apart at 600 px is off by far more than float32's."""
    a = torch.tensor([[600.0, 600.0, 640.0, 640.0]])
    b = a + torch.tensor([1.0, 1.0, 1.0, 1.0])
    exact = box_ops.pairwise_iou(a.double(), b.double()).item()
    assert abs(box_ops.pairwise_iou(a, b).item() - exact) < 1e-6
    assert a.to(BF16)[0, 2].item() != 640.0 or b.to(BF16)[0, 2].item() != 641.0  # 641 is not a bf16 value


# ------------------------------------------------------------------ every family, a few bf16 steps
# (module or class, attribute): the assigner / IoU / loss entry points each family reaches from loss()
ENTRY_POINTS = {
    "rtmdet_tiny": [(dynamic_soft_label.DynamicSoftLabelAssigner, "assign"), (dynamic_soft_label, "pairwise_iou"),
                    (rtmdet, "quality_focal_loss"), (rtmdet, "iou_loss")],
    "rtmdet_ins_tiny": [(dynamic_soft_label.DynamicSoftLabelAssigner, "assign"), (dynamic_soft_label, "pairwise_iou"),
                        (rtmdet, "quality_focal_loss"), (rtmdet, "iou_loss"), (rtmdet_ins, "dice_loss")],
    "yolov6_n": [(task_aligned.TaskAlignedAssigner, "__call__"), (atss.ATSSAssigner, "__call__"),
                 (task_aligned, "batched_pairwise_iou"), (atss, "batched_pairwise_iou"),
                 (yolov6_loss, "varifocal_loss"), (yolov6_loss, "iou_loss")],  # yolov6_n: no DFL (reg_max 0)
    "spinenet_49s": [(max_iou.MaxIoUAssigner, "assign"), (max_iou, "pairwise_iou"),
                     (spinenet, "sigmoid_focal_loss"), (spinenet, "huber_loss")],
    "yolov3_asff": [(yolov3_asff, "yolov3_level_loss"), (yolov3_asff_loss, "cxcywh_iou"),
                    (yolov3_asff_loss, "_wh_iou")],
}


# SpineNet's P7 is 1x1 below 256 px: its BatchNorm then normalises 2 values per channel (batch 2), whose
# bf16 variance can round to a non-finite gradient on some CPUs (seen once in CI); 256 px gives P7 2x2.
INPUT_SIZE = {"spinenet_49s": 256}


def _float_dtypes(obj) -> list[torch.dtype]:
    if torch.is_tensor(obj):
        return [obj.dtype] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [d for v in obj for d in _float_dtypes(v)]
    return []


def _record_calls(monkeypatch, points) -> dict[str, list[tuple[list[str], list[torch.dtype]]]]:
    """Wrap each entry point with a recorder of (autocast device types on, float input dtypes) at call time."""
    calls: dict[str, list] = {}
    for owner, attr in points:
        key = f"{getattr(owner, '__name__', owner)}.{attr}"
        original = getattr(owner, attr)
        calls[key] = []

        def recorder(*args, __original=original, __key=key, **kwargs):
            calls[__key].append((autocast_active(), _float_dtypes((args, kwargs))))
            return __original(*args, **kwargs)

        monkeypatch.setattr(owner, attr, functools.wraps(original)(recorder))
    return calls


def _targets(size: int, num_classes: int, with_masks: bool) -> list[dict]:
    out = []
    for boxes, labels in (([[8.0, 10, 30, 40], [34, 30, 60, 62]], [1, 0]), ([[4.0, 4, 60, 44]], [num_classes - 1])):
        t = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}
        if with_masks:
            masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes):
                m[int(y1):int(y2), int(x1):int(x2)] = 1
            t["masks"] = masks
        out.append(t)
    return out


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_family_trains_in_bf16_with_float32_assignment_and_losses(name, monkeypatch):
    torch.manual_seed(0)
    size, num_classes = INPUT_SIZE.get(name, 64), 3
    model = detmodels.create_model(name, num_classes=num_classes).train()
    if name == "yolov6_n":  # step 0 assigns with ATSS (warm-up), step 1 with TAL
        model.criterion.atss_warmup_epochs = 1
    activations: list[torch.dtype] = []
    model.backbone.register_forward_hook(lambda m, i, o: activations.extend(_float_dtypes(o)))
    calls = _record_calls(monkeypatch, ENTRY_POINTS[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    targets = _targets(size, num_classes, with_masks="ins" in name)
    for step in range(2):
        model.set_epoch(step, 2)
        with torch.autocast("cpu", dtype=BF16):
            losses = model.loss(model(torch.rand(2, 3, size, size)), targets)
        total = sum(losses.values())
        assert all(v.dtype == torch.float32 for v in losses.values()), {k: v.dtype for k, v in losses.items()}
        assert math.isfinite(float(total.detach())), losses
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
    assert activations and set(activations) == {BF16}, f"backbone outputs: {set(activations)}"
    for key, seen in calls.items():
        assert seen, f"{name}: {key} was never called"
        for active, dtypes in seen:
            assert active == [], f"{name}: {key} called with autocast on ({active})"
            assert all(d == torch.float32 for d in dtypes), f"{name}: {key} got {set(dtypes)}"
