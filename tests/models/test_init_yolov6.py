"""YOLOv6 v3.0 initialisation and normalisation as meituan/YOLOv6 has them (issue 25), and a fixed-batch
trajectory from detflow's own initialisation.

Scheme (``detmodels.families.yolov6.init_yolov6_``; Y6 ``yolov6/models/yolo.py`` ``Model.__init__``,
``yolov6/utils/torch_utils.py`` ``initialize_weights``, ``yolov6/models/effidehead.py`` ``initialize_biases``):
convs keep PyTorch's default kaiming-uniform (a = √5), so ``w / (1/√fan_in)`` is U(−1, 1) (mean 0, std 1/√3);
every BN has eps 1e-3, momentum 0.03, γ 1, β 0; predictors have weight 0, class bias −log(99), box bias 1.
"""
import math

import pytest
import torch
from torch import nn

from detmodels import create_model, variant_options

NC = 3
U_STD = 1 / math.sqrt(3)  # std of U(−1, 1)


def _build(name="yolov6_n", head=None):
    torch.manual_seed(0)
    return create_model(name, num_classes=NC, options=variant_options(name, {"head": head} if head else None))


def _layer_types(model):
    """Conv weights by layer type, each scaled by 1/bound = √fan_in (→ U(−1, 1) under the scheme)."""
    groups = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            key, fan_in = "bic_upsample", m.weight.shape[1] * m.weight[0, 0].numel()  # torch's fan for ConvT
        elif isinstance(m, nn.Conv2d) and "preds" not in name:
            part = name.split(".")[0]
            kind = "conv3x3" if m.kernel_size == (3, 3) else "conv1x1"
            key, fan_in = f"{part}_{kind}", m.weight[0].numel()
        else:
            continue
        groups.setdefault(key, []).append(m.weight.detach().flatten() * math.sqrt(fan_in))
    return {k: torch.cat(v) for k, v in groups.items()}


@pytest.mark.parametrize("name", ["yolov6_n", pytest.param("yolov6_m", marks=pytest.mark.slow)])
def test_conv_weights_follow_pytorch_default_per_layer_type(name):
    groups = _layer_types(_build(name))
    expected = {"backbone_conv3x3", "backbone_conv1x1", "neck_conv3x3", "neck_conv1x1", "head_conv3x3",
                "head_conv1x1", "bic_upsample"}
    assert expected <= set(groups)
    for key, w in groups.items():
        tol = 4 / math.sqrt(w.numel())  # ~7 standard errors of the mean / std of U(−1, 1)
        assert w.abs().max() <= 1.0 + 1e-6, key
        assert abs(w.mean().item()) < tol, (key, w.mean().item())
        assert abs(w.std().item() - U_STD) < tol, (key, w.std().item())


def test_bic_upsample_bias_is_pytorch_default():
    model = _build()
    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            bound = 1 / math.sqrt(m.weight.shape[1] * m.weight[0, 0].numel())
            assert m.bias.abs().max() <= bound and m.bias.abs().max() > 0


@pytest.mark.parametrize("name", ["yolov6_n", pytest.param("yolov6_m", marks=pytest.mark.slow)])
def test_every_batchnorm_has_reference_eps_momentum_and_identity_affine(name):
    model = _build(name)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) > 50
    for bn in bns:
        assert (bn.eps, bn.momentum) == (1e-3, 0.03)
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    alphas = [p for n, p in model.named_parameters() if n.endswith("alpha")]
    assert all(torch.equal(a, torch.ones(1)) for a in alphas)
    assert (len(alphas) > 0) == (name == "yolov6_m")  # BottleRep only in CSPBep (M/L)


def test_predictors_zero_weight_prior_class_bias_unit_box_bias():
    head = _build(head={"anchor_aided": True, "dld": True}).head
    cls_bias = -math.log(99.0)  # −log((1 − 0.01) / 0.01)
    for group, bias in ((head.cls_preds, cls_bias), (head.cls_preds_ab, cls_bias), (head.reg_preds, 1.0),
                        (head.reg_preds_ab, 1.0), (head.reg_preds_dfl, 1.0)):
        assert len(group) == 3
        for conv in group:
            assert torch.count_nonzero(conv.weight) == 0
            assert torch.allclose(conv.bias, torch.full_like(conv.bias, bias), atol=0, rtol=1e-6)
    # the towers before the predictors are not zeroed (default init)
    assert all(torch.count_nonzero(c.conv.weight) == c.conv.weight.numel() for c in head.cls_convs)


def test_official_style_load_overwrites_the_init():
    """Loading a state dict after construction replaces the init (pretrained/converted weights unaffected)."""
    model, other = _build(), _build()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
        for m in other.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(2.0)
    model.load_state_dict(other.state_dict())
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------ fixed-batch trajectory
def fixed_batch(n=4, size=128, seed=0):
    """``n`` images (RGB in [0, 1], ``n×3×size×size``) of noise with 3 bright class-coloured rectangles
    each, and their targets (xyxy pixels, labels in 0..2)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 60
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(3):
            wh = (torch.rand(2, generator=g) * 0.3 + 0.15) * size
            x0, y0 = (torch.rand(2, generator=g) * (size - wh)).tolist()
            c = int(torch.randint(0, NC, (1,), generator=g))
            images[i, c, int(y0):int(y0 + wh[1]), int(x0):int(x0 + wh[0])] = 230.0
            boxes.append([x0, y0, x0 + float(wh[0]), y0 + float(wh[1])])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
    return images / 255.0, targets


def sgd_trajectory(model, images, targets, *, lr, momentum, weight_decay, nesterov, steps=25):
    """Losses (``{key: float}`` plus ``total``) at each of ``steps`` SGD steps on one batch; decay on conv
    weights only (as detflow's ``param_groups``: no decay on BN and biases)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=momentum, nesterov=nesterov)
    model.train()
    history = []
    for _ in range(steps):
        losses = model.loss(model(images), targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({**{k: v.item() for k, v in losses.items()}, "total": loss.item()})
    return history


def _mean(history, key, part):
    values = [h[key] for h in (history[:3] if part == "first" else history[-3:])]
    return sum(values) / len(values)


# yolov6 recipe (detflow.engine.recipes): Nesterov SGD lr 0.02 per 256 images (yolov6_n), momentum 0.937,
# wd 5e-4, lr scaled linearly with the batch → 0.02 · 4 / 256 for the 4-image batch.
RECIPE_SGD = {"lr": 0.02 * 4 / 256, "momentum": 0.937, "weight_decay": 5e-4, "nesterov": True}


@pytest.mark.slow
def test_fixed_batch_trajectory_yolov6_n():
    """25 steps on one 4-image batch (160 px) from detflow's own init, at the recipe's scaled lr.

    Measured on the loaded 2-core machine (the same before and after issue 25: detflow's init already
    matched Y6's), two runs (CPU float order changes TAL ties): total 3.240 → 3.348 and 3.240 → 3.277
    (means of first/last 3: 3.243 / 3.346 and 3.243 / 3.288); loss_iou 1.481 → 0.999 (1.475 / 1.038),
    loss_cls 1.759 → 2.349 in the first. At lr 0.02 (the recipe's base lr unscaled) the total falls:
    3.126, 3.218, 3.133, 3.049, 2.996 over the first 5 steps (128 px).

    The IoU-aware VarifocalLoss *rises* at the scaled lr by design: its positive targets are the
    (normalised) IoUs of the predicted boxes, which grow as the boxes improve, while at lr 3e-4 the
    zero-initialised class predictors barely move in 25 steps. So the total is asserted not to climb
    (< 1.10 × start; RTMDet-tiny's climbed 2×) and the box loss to fall (< 0.85 × start).
    """
    images, targets = fixed_batch(size=160)
    history = sgd_trajectory(_build(), images, targets, steps=25, **RECIPE_SGD)
    print("yolov6_n trajectory:", " ".join(f"{h['total']:.3f}" for h in history))
    assert all(math.isfinite(h["total"]) for h in history)
    assert _mean(history, "total", "last") < 1.10 * _mean(history, "total", "first")
    assert _mean(history, "loss_iou", "last") < 0.85 * _mean(history, "loss_iou", "first")
