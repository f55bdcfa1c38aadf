"""RepOpt (arXiv 2205.15242 §3): a RealVGG conv trained with RepOptimizer follows the CSLA block
exactly; the yolov6 hyper-search and RepOpt builds line up block by block; a RepOpt yolov6_n trains
and re-parameterizes to the same outputs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import detmodels
from detmodels import (LinearAddBlock, RealVGGBlock, RepOptimizer, check_scales, extract_scales, grad_masks,
                       init_from_scales_, scales_from_state_dict)
from detmodels.layers.repopt import csla_kernel
from detmodels.repopt import grad_mask

STEPS = 8


def _csla_pair(c_in: int, c_out: int, stride: int, seed: int = 0):
    """A LinearAddBlock whose scales are random constants (frozen: CSLA) and a RealVGGBlock whose
    kernel is that block's CSLA kernel; both float64, BN in training mode."""
    torch.manual_seed(seed)
    csla = LinearAddBlock(c_in, c_out, stride).double()
    with torch.no_grad():
        for s in (csla.scale3, csla.scale1, csla.scale_id):
            if s is not None:
                s.uniform_(0.3, 1.7)
                s.requires_grad_(False)
    real = RealVGGBlock(c_in, c_out, stride).double()
    with torch.no_grad():
        real.conv.weight.copy_(csla_kernel(csla.conv3x3.weight, csla.conv1x1.weight, *csla.scales()))
    return csla, real


def _train(block: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((block(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
    return block(x).detach()


def _run_pair(c_in, c_out, stride, *, momentum, nesterov=False, weight_decay=0.0, masked=True):
    csla, real = _csla_pair(c_in, c_out, stride)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, c_in, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(4, c_out, 8 // stride, 8 // stride, generator=g, dtype=torch.float64)
    sgd = {"lr": 0.05, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
    out_csla = _train(csla, torch.optim.SGD([p for p in csla.parameters() if p.requires_grad], **sgd), x, target)
    s3, s1, _ = csla.scales()
    masks = {real.conv.weight: grad_mask(s3, s1, real.conv.weight.shape)} if masked else {}
    out_real = _train(real, RepOptimizer(real.parameters(), masks, **sgd), x, target)
    kernel = csla_kernel(csla.conv3x3.weight, csla.conv1x1.weight, *csla.scales()).detach()
    return out_csla, out_real, kernel, real.conv.weight.detach()


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("c_in,c_out,stride", [(6, 6, 1), (4, 6, 2)])
def test_repoptimizer_reproduces_the_csla_block_exactly(c_in, c_out, stride, momentum, nesterov):
    """K SGD steps on the CSLA block (constant scales, identity when in == out, stride 1) and on the
    single conv with RepOptimizer: same kernels and same outputs to ~1e-9 (float64)."""
    out_csla, out_real, k_csla, k_real = _run_pair(c_in, c_out, stride, momentum=momentum, nesterov=nesterov)
    assert (k_real - k_csla).abs().max() < 1e-9
    assert (out_real - out_csla).abs().max() < 1e-9
    assert (k_real - k_csla).abs().max() < 1e-5 and (out_real - out_csla).abs().max() < 1e-5  # the brief's bar


def test_weight_decay_is_exact_without_an_identity_branch():
    """Weight decay after the mask: exact for blocks without identity (CSLA decays W3, W1 only)."""
    out_csla, out_real, k_csla, k_real = _run_pair(4, 6, 2, momentum=0.9, weight_decay=0.05)
    assert (k_real - k_csla).abs().max() < 1e-9 and (out_real - out_csla).abs().max() < 1e-9


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_without_the_mask_the_single_conv_drifts_from_the_csla_block(momentum):
    out_csla, out_real, k_csla, k_real = _run_pair(6, 6, 1, momentum=momentum, masked=False)
    assert (k_real - k_csla).abs().max() > 1e-3
    assert (out_real - out_csla).abs().max() > 1e-3


def test_grad_mask_values():
    s3, s1 = torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.0])
    m = grad_mask(s3, s1, (2, 3, 3, 3))
    assert torch.equal(m[0, :, 0, 0], torch.full((3,), 4.0)) and torch.equal(m[0, :, 1, 1], torch.full((3,), 13.0))
    assert torch.equal(m[1, :, 2, 1], torch.full((3,), 0.25)) and torch.equal(m[1, :, 1, 1], torch.full((3,), 1.25))


def test_linear_add_block_reparameterizes_to_the_same_outputs():
    torch.manual_seed(0)
    block = LinearAddBlock(8, 8, 1)
    with torch.no_grad():
        for s in (block.scale3, block.scale1, block.scale_id):
            s.uniform_(0.5, 1.5)
    block.train()(torch.randn(8, 8, 6, 6))  # BN statistics
    block.eval()
    x = torch.randn(2, 8, 6, 6)
    before = block(x)
    block.reparameterize()
    assert block.fused is not None and torch.allclose(block(x), before, atol=1e-5)


# --------------------------------------------------------------------------- yolov6_n builds
def _yolov6_n(block: str) -> detmodels.Detector:
    return detmodels.create_model("yolov6_n", num_classes=3, backbone=detmodels.YOLOv6BackboneOptions(block=block))


def test_hyper_search_scales_map_onto_every_repopt_block():
    hyper, rep = _yolov6_n("hyper_search"), _yolov6_n("repopt")
    scales = extract_scales(hyper)
    reals = {n for n, m in rep.named_modules() if isinstance(m, RealVGGBlock)}
    assert set(scales) == reals and len(reals) > 10
    assert not any(isinstance(m, LinearAddBlock) for m in rep.modules())
    assert "backbone.stem" in scales and scales["backbone.stem"][2] is None  # 3→16, stride 2: no identity
    with_id = [n for n, (_, _, s_id) in scales.items() if s_id is not None]
    assert with_id and len(with_id) < len(scales)
    assert all(torch.equal(s, torch.ones_like(s)) for v in scales.values() for s in v if s is not None)  # init 1
    check_scales(rep, scales)
    state_scales = scales_from_state_dict(hyper.state_dict())
    assert state_scales.keys() == scales.keys()
    with pytest.raises(ValueError, match="hyper-search"):
        scales_from_state_dict(rep.state_dict())
    with pytest.raises(ValueError, match="hyper-search"):
        extract_scales(rep)


def test_parameter_counts_and_deploy_forms_agree():
    """Training forms: RepOpt (3×3 conv + BN) < hyper-search (3×3 + 1×1 + scales + BN) < RepVGG (3 BNs);
    the three deploy forms are the same plain-conv network."""
    models = {b: _yolov6_n(b) for b in ("repopt", "hyper_search", "repvgg")}
    train = {b: detmodels.count_params(m) for b, m in models.items()}
    assert train["repopt"] < train["hyper_search"] < train["repvgg"]
    deploy = {b: detmodels.count_params(detmodels.reparameterize_model(m)) for b, m in models.items()}
    assert deploy["repopt"] == deploy["hyper_search"] == deploy["repvgg"] < train["repopt"] + 1000


def test_init_from_scales_follows_the_formula():
    hyper, rep = _yolov6_n("hyper_search"), _yolov6_n("repopt")
    with torch.no_grad():
        for name, m in hyper.named_modules():
            if isinstance(m, LinearAddBlock):
                m.scale3.fill_(2.0), m.scale1.fill_(0.0)
                if m.scale_id is not None:
                    m.scale_id.fill_(5.0)
    scales = extract_scales(hyper)
    torch.manual_seed(0)
    init_from_scales_(rep, scales)
    stem = rep.backbone.stem.conv.weight  # no identity: 2·W3, W3 ~ U(±1/√27)
    assert stem.abs().max() <= 2 / math.sqrt(27) + 1e-6 and stem.abs().max() > 1 / math.sqrt(27)
    blk = rep.get_submodule(next(n for n, v in scales.items() if v[2] is not None))
    w = blk.conv.weight
    centre = w[torch.arange(w.shape[0]), torch.arange(w.shape[0]), 1, 1]
    assert centre.min() > 4.0  # 5 (identity) + 2·W3 with |W3| < 1/√(9·in)
    wrong = {k: v for k, v in scales.items() if k != "backbone.stem"}
    with pytest.raises(ValueError, match="backbone.stem"):
        init_from_scales_(rep, wrong)


def test_repopt_yolov6_n_trains_and_reparameterizes_to_the_same_outputs():
    hyper, rep = _yolov6_n("hyper_search"), _yolov6_n("repopt")
    with torch.no_grad():
        for m in hyper.modules():
            if isinstance(m, LinearAddBlock):
                for s in (m.scale3, m.scale1, m.scale_id):
                    if s is not None:
                        s.uniform_(0.5, 1.5)
    scales = extract_scales(hyper)
    torch.manual_seed(0)
    init_from_scales_(rep, scales)
    masks = grad_masks(rep, scales)
    assert len(masks) == len(scales)
    opt = RepOptimizer(rep.parameters(), masks, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.rand(2, 3, 64, 64)
    targets = [detmodels.Target(boxes=torch.tensor([[4.0, 6.0, 40.0, 50.0]]), labels=torch.tensor([1])),
               detmodels.Target(boxes=torch.tensor([[10.0, 10.0, 30.0, 20.0]]), labels=torch.tensor([2]))]
    rep.train()
    first = rep.backbone.stem.conv.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        losses = rep.loss(rep(images), targets)
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        opt.step()
    assert not torch.equal(first, rep.backbone.stem.conv.weight)
    rep.eval()
    with torch.no_grad():
        before = rep(images)
        detmodels.reparameterize_model(rep)
        after = rep(images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rep.modules())
    for key in ("cls", "box"):
        for a, b in zip(before[key], after[key]):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
