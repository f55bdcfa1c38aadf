"""SpineNet + RetinaNet initialisation and normalisation as tensorflow/models has them
(``official/vision/modeling/backbones/spinenet.py``, ``…/heads/dense_prediction_heads.py``), and
a fixed-batch trajectory: 25 SGD steps from detmodels' own init lower the total loss.

Scheme under test (see ``detmodels.families.spinenet.init_retinanet_``):

* backbone convs (stem, blocks, resampling, endpoints): Keras ``VarianceScaling()``: truncated
  normal at ±2σ, std ``sqrt(1 / fan_in)``, no bias;
* head tower convs N(0, 0.01), bias 0; predictors N(0, 1e-5), class bias ``-log((1 - 0.01) / 0.01)``,
  box bias 0;
* every BatchNorm: eps 1e-3, PyTorch momentum 0.01 (Keras 0.99), γ = 1, β = 0.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detmodels import create_model

NUM_CLASSES = 3


def _model(name: str = "spinenet_49s", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, NUM_CLASSES)


def _backbone_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)]


def _pooled_std(convs, kind: str) -> list[float]:
    """Per conv: std of the weights times sqrt(fan_in), i.e. 1.0 under VarianceScaling(fan_in)."""
    out = []
    for _, c in convs:
        w = c.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        stat = w.detach().std() if kind == "std" else w.detach().mean()
        out.append(float(stat) * math.sqrt(fan_in))
    return out


def test_backbone_convs_are_variance_scaling_truncated_normal():
    model = _model()
    convs = _backbone_convs(model)
    assert len(convs) > 50
    for name, c in convs:
        w = c.weight.detach()
        fan_in = w[0].numel()
        sigma = math.sqrt(1.0 / fan_in)
        assert c.bias is None, name
        # Sampling tolerance: the std of a sample std is ~σ/sqrt(2n); 6 of those, plus 5 % floor.
        tol = max(6 / math.sqrt(2 * w.numel()), 0.05)
        assert abs(float(w.std()) / sigma - 1.0) < tol, f"{name}: std {float(w.std()):.4g} vs {sigma:.4g}"
        assert abs(float(w.mean())) < 6 * sigma / math.sqrt(w.numel()) + 1e-6, name
        # Truncation at 2 · (σ / 0.8796): no weight beyond it.
        assert float(w.abs().max()) <= 2 * sigma / 0.87962566103423978 + 1e-6, name


# Layer types of the backbone: (name, conv) → belongs to the type.
LAYER_TYPES = {
    "stem 7x7/2": lambda n, c: n.startswith("stem."),
    "block 1x1": lambda n, c: "blocks." in n and "resample" not in n and "shortcut" not in n
    and c.kernel_size == (1, 1),
    "block 3x3": lambda n, c: "blocks." in n and "resample" not in n and c.kernel_size == (3, 3),
    "projection shortcut": lambda n, c: "shortcut" in n,
    "resample 1x1": lambda n, c: "resample" in n and c.kernel_size == (1, 1),
    "resample 3x3/2": lambda n, c: "resample" in n and c.stride == (2, 2),
    "endpoint 1x1": lambda n, c: n.startswith("endpoints."),
}


def test_layer_types_cover_every_backbone_conv_once():
    convs = _backbone_convs(_model())
    for name, c in convs:
        assert sum(pick(name, c) for pick in LAYER_TYPES.values()) == 1, name


@pytest.mark.parametrize("kind", sorted(LAYER_TYPES))
def test_each_backbone_layer_type_has_unit_fan_in_variance(kind):
    """Averaged over the convs of one layer type, std · sqrt(fan_in) is 1 within 3 % (PyTorch's
    default kaiming_uniform(a=√5) would give 1/√3 ≈ 0.577) and mean · sqrt(fan_in) is ~0."""
    model = _model()
    convs = [(n, c) for n, c in _backbone_convs(model) if LAYER_TYPES[kind](n, c)]
    assert convs, kind
    stds, means = _pooled_std(convs, "std"), _pooled_std(convs, "mean")
    assert abs(sum(stds) / len(stds) - 1.0) < 0.03, (kind, stds[:5])
    assert abs(sum(means) / len(means)) < 0.03, (kind, means[:5])


def test_head_init_and_prior_bias_are_exact():
    head = _model().head
    for conv in [*head.cls_convs, *head.box_convs]:
        assert abs(float(conv.weight.std()) - 0.01) < 0.0005
        assert abs(float(conv.weight.mean())) < 0.0005
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    for pred in (head.cls_pred, head.box_pred):
        assert abs(float(pred.weight.std()) - 1e-5) < 1e-6
    assert torch.equal(head.cls_pred.bias, torch.full_like(head.cls_pred.bias, -math.log(0.99 / 0.01)))
    assert torch.equal(head.box_pred.bias, torch.zeros_like(head.box_pred.bias))


def test_every_batchnorm_has_tf_eps_and_momentum():
    model = _model()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) > 100
    for bn in norms:
        assert bn.eps == 1e-3 and bn.momentum == 0.01
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_init_is_deterministic_under_a_seed():
    a, b = _model(seed=3), _model(seed=3)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na


# ---------------------------------------------------------------------- fixed-batch trajectory
def fixed_batch(n: int = 4, size: int = 128, num_classes: int = NUM_CLASSES, seed: int = 0):
    """``n`` noisy grey images (``n×3×size×size``, ~unit scale) with 1–3 filled rectangles each,
    the colour telling the class; targets in input pixels (xyxy)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5]])
    targets = []
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        boxes, labels = [], []
        for _ in range(k):
            w, h = (torch.randint(size // 6, size // 2, (2,), generator=g)).tolist()
            x0 = int(torch.randint(0, size - w, (1,), generator=g))
            y0 = int(torch.randint(0, size - h, (1,), generator=g))
            c = int(torch.randint(0, num_classes, (1,), generator=g))
            images[i, :, y0:y0 + h, x0:x0 + w] += colours[c % 3, :, None, None]
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def sgd_trajectory(model: nn.Module, images, targets, *, lr: float, momentum: float, weight_decay: float,
                   steps: int = 25) -> list[float]:
    """Total loss per step of ``steps`` plain SGD steps on one batch (decay on conv weights only,
    as detflow's ``param_groups``)."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum)
    model.train()
    losses = []
    for _ in range(steps):
        loss = sum(model.loss(model(images), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_fixed_batch_loss_falls_from_own_init():
    """25 SGD steps at the retinanet recipe's lr (0.28 per 256 images → 0.004375 for 4), momentum
    0.9, wd 4e-5, no warm-up: the mean of the last 3 losses is below the mean of the first 3."""
    model = _model()
    images, targets = fixed_batch()
    losses = sgd_trajectory(model, images, targets, lr=0.28 * 4 / 256, momentum=0.9, weight_decay=4e-5)
    print("spinenet_49s trajectory:", " ".join(f"{x:.3f}" for x in losses))
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
