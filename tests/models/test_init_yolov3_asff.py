"""YOLOv3 + ASFF initialisation and normalisation as the reference code has them (issue 25), and a
fixed-batch loss trajectory from that initialisation.

Reference: GOATmessi7/ASFF ``main.py`` ``init_yolo`` (every ``nn.Conv2d``: Kaiming-normal fan-in,
``a = 0.1``; biases 0; BN γ = 1, β = 0), ``models/network_blocks.py`` ``add_conv`` (``nn.BatchNorm2d``
with PyTorch's eps 1e-5 / momentum 0.1), ``utils/DCN/modules/deform_conv2d.py`` (the deformable conv
is not an ``nn.Conv2d``: Kaiming-uniform ``a = √5``, bias ``U(±1/√fan_in)``). No head-specific normal
std and no prior-probability bias: the head's biases start at 0.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detmodels import create_model
from detmodels.families.yolov3_asff import init_yolov3_asff_
from detmodels.layers.asff import RFBBlock
from detmodels.layers.deform_conv import DeformConv2d

GAIN = math.sqrt(2.0 / (1.0 + 0.1**2))  # kaiming_normal_(a=0.1, nonlinearity="leaky_relu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("yolov3_asff", num_classes=3)


def _fan_in(w: torch.Tensor) -> int:
    return w.shape[1] * w[0, 0].numel()


def _category(name: str, conv: nn.Conv2d) -> str:
    if conv.groups > 1:
        return "grouped 1x1 (conv_offset)"
    if conv.bias is not None:
        return "biased 1x1 (weight_levels, guide_wh, pred)"
    return f"conv unit {conv.kernel_size[0]}x{conv.kernel_size[0]}"


def _normalised_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every ``nn.Conv2d`` weight divided by its documented std ``GAIN/√fan_in``, pooled per layer type."""
    pools: dict[str, list[torch.Tensor]] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()
            pools.setdefault(_category(name, m), []).append(w.flatten() / (GAIN / math.sqrt(_fan_in(w))))
    return {k: torch.cat(v) for k, v in pools.items()}


def _assert_standard_normal(key: str, z: torch.Tensor) -> None:
    """Mean 0, std 1 and kurtosis 3 (normal, not uniform: 1.8) within 6 standard errors."""
    n = z.numel()
    mean, std = z.mean().item(), z.std().item()
    kurt = ((z - mean) ** 4).mean().item() / std**4
    assert abs(mean) < 6 / math.sqrt(n), f"{key}: mean {mean:.4f} over {n}"
    assert abs(std - 1) < 6 / math.sqrt(2 * n), f"{key}: std/expected {std:.4f} over {n}"
    assert abs(kurt - 3) < 6 * math.sqrt(24 / n), f"{key}: kurtosis {kurt:.3f} over {n}"


def test_conv_weights_kaiming_normal_per_layer_type(model):
    pools = _normalised_weights(model)
    assert set(pools) == {"conv unit 1x1", "conv unit 3x3", "grouped 1x1 (conv_offset)",
                          "biased 1x1 (weight_levels, guide_wh, pred)"}
    for key, z in pools.items():
        _assert_standard_normal(key, z)


def test_conv_biases_zero_no_prior_bias(model):
    biased = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert {n.rsplit(".", 1)[-1] for n, _ in biased} == {"weight_levels", "guide_wh", "conv_offset", "pred"}
    for name, m in biased:
        assert torch.count_nonzero(m.bias) == 0, name  # class and objectness slots included


def test_deform_conv_keeps_its_uniform_init(model):
    dconvs = [m for m in model.modules() if isinstance(m, DeformConv2d)]
    assert len(dconvs) == 3
    for m in dconvs:
        bound = 1 / math.sqrt(_fan_in(m.weight))
        w = m.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(w.std().item() * math.sqrt(3) / bound - 1) < 6 / math.sqrt(2 * w.numel())
        assert m.bias.abs().max() <= bound and m.bias.abs().max() > 0


def test_batchnorm_settings(model):
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 88  # one per conv unit (Darknet-53 52, neck 19, ASFF 17)
    for m in bns:
        assert (m.eps, m.momentum) == (1e-5, 0.1)
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)


def test_rfb_convs_follow_the_scheme():
    torch.manual_seed(0)
    rfb = RFBBlock(256)
    init_yolov3_asff_(rfb)
    convs = [m for m in rfb.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9 and all(torch.count_nonzero(c.bias) == 0 for c in convs)
    z = torch.cat([c.weight.detach().flatten() * math.sqrt(_fan_in(c.weight)) / GAIN for c in convs])
    _assert_standard_normal("RFB convs", z)


# ----------------------------------------------------------------------------- fixed-batch trajectory
def fixed_batch(n: int = 4, size: int = 128, num_classes: int = 3, seed: int = 0):
    """``n`` grey noisy images with two solid class-coloured rectangles each (RGB 0–255, ``n×3×S×S``)
    and their targets (xyxy pixel boxes, labels)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.full((n, 3, size, size), 114.0) + 10 * torch.randn(n, 3, size, size, generator=g)
    colours = torch.tensor([[230.0, 40, 40], [40, 200, 60], [50, 70, 230]])
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for j in range(2):
            w, h = (int(v) for v in torch.randint(size // 6, size // 2, (2,), generator=g))
            x0 = int(torch.randint(0, size - w, (1,), generator=g))
            y0 = int(torch.randint(0, size - h, (1,), generator=g))
            c = (i + j) % num_classes
            imgs[i, :, y0:y0 + h, x0:x0 + w] = colours[c].view(3, 1, 1)
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return imgs, targets


def sgd_trajectory(model, imgs, targets, *, steps: int, lr: float, momentum: float, weight_decay: float) -> list[float]:
    """Total loss before each of ``steps`` SGD steps on one fixed batch (decay on conv weights only,
    as detflow's ``param_groups``)."""
    spec = model.input_spec
    x = (imgs - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    model.train()
    totals = []
    for _ in range(steps):
        total = sum(model.loss(model(x), targets).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    return totals


@pytest.mark.slow
def test_fixed_batch_loss_falls_from_own_init():
    """25 SGD steps (momentum 0.9, weight decay 5e-4 as the yolov3_asff recipe) at lr 1e-4 on 4 images
    at 128 px. The recipe's lr is 1e-3, but the reference only reaches it after a 5-epoch power-4
    burn-in (main.py: lr·(it/burn_in_its)⁴) on a pretrained Darknet-53; at a constant 1e-3 from
    scratch the loss (a sum of ~1,300 objectness terms per image) goes NaN within 10 steps with this
    and with PyTorch's default init alike. Measured (seed 0): 959 → 142 → 79 … 35, 31, 32."""
    torch.manual_seed(0)
    model = create_model("yolov3_asff", num_classes=3)
    imgs, targets = fixed_batch()
    totals = sgd_trajectory(model, imgs, targets, steps=25, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    assert all(math.isfinite(v) for v in totals), totals
    first, last = sum(totals[:3]) / 3, sum(totals[-3:]) / 3
    assert last < 0.5 * first, totals
    assert totals[-1] < min(totals[2:5]), totals  # still falling after the first objectness drop
