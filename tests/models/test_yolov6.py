"""YOLOv6 v3.0: every registered variant at 64×64, batch 2 — shapes, losses, fusion, counts, AAT/DLD,
distillation and the official-weight converter (round trip through reference key names)."""
import copy
import math

import pytest
import torch

import detmodels
from detmodels import (count_params, create_model, list_models, load_official_weights, reparameterize_model,
                       variant_options)
from detmodels.families.yolov6 import VARIANTS as YOLOV6_CONFIGS
from detmodels.families.yolov6 import cosine_distill_weight
from detmodels.families.yolov6_head import EfficientDecoupledHead
from detmodels.families.yolov6_weights import reference_key_map
from detmodels.weights import WeightsError

# (training-form, deploy-form) parameter counts in millions, 80 classes: deploy counts from the reference
# notes (architectures.md §1); training counts of the P6 models from the reference code built here.
PUBLISHED = {"yolov6_n": (5.058, 4.647), "yolov6_s": (20.147, 18.537), "yolov6_m": (37.741, 34.856),
             "yolov6_l": (59.639, 59.608), "yolov6_n6": (11.239, 10.374), "yolov6_s6": (44.797, 41.394),
             "yolov6_m6": (85.491, 79.640), "yolov6_l6": (140.414, 140.359)}
HEAVY = {"yolov6_l", "yolov6_m6", "yolov6_l6"}  # 60–140 M parameters: seconds per build even at 64 px
P6 = {"yolov6_n6", "yolov6_s6", "yolov6_m6", "yolov6_l6"}
DFL = {"yolov6_m", "yolov6_l", "yolov6_m6", "yolov6_l6"}


def _train_head(name):
    """Every training-only auxiliary the variant supports: AAT (P5) and DLD (N/S)."""
    if name in P6:
        return None
    return {"anchor_aided": True, "dld": name in ("yolov6_n", "yolov6_s")}


def _variants(slow=frozenset(HEAVY)):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in list_models("yolov6")]


VARIANTS = _variants()
NC = 3
_CACHE: dict = {}



def _model(name: str, **kw):
    """Build once per (name, options) and hand out copies (M/L take seconds to initialise)."""
    key = (name, tuple(sorted((k, str(v)) for k, v in kw.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        overrides = {k: v for k, v in kw.items() if v is not None}  # None: the variant's defaults
        _CACHE[key] = create_model(name, num_classes=NC, options=variant_options(name, overrides))
    return copy.deepcopy(_CACHE[key])


def _targets():
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[10.0, 10.0, 26.0, 30.0]]), "labels": torch.tensor([1])},
    ]


def _randomise(model, seed=0):
    """Non-trivial BN statistics and predictor weights (predictors start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
        for name, p in model.named_parameters():
            if "preds" in name and p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return model


def test_registry():
    assert set(PUBLISHED) == set(list_models("yolov6"))
    for name in PUBLISHED:
        entry = detmodels.get_model_entry(name)
        assert (entry.family, entry.input_size, entry.task) == ("yolov6", 1280 if name in P6 else 640, "bbox")


@pytest.mark.parametrize("name", list_models("yolov6"))
def test_param_counts_train_and_deploy(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=80)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in bns)
        assert model.criterion.iou_type == ("siou" if name in ("yolov6_n", "yolov6_n6") else "giou")
        train = count_params(model) / 1e6
        deploy = count_params(reparameterize_model(model)) / 1e6
        if name not in P6:  # AAT adds 0.057 M (N) … 0.227 M (L) of training-only predictors
            chans, reg = model.neck.out_channels, model.reg_max
            plain = count_params(EfficientDecoupledHead(chans, 80, reg))
            extra = count_params(EfficientDecoupledHead(chans, 80, reg, anchor_aided=True)) - plain
            assert 0.05 < extra / 1e6 < 0.25
    want_train, want_deploy = PUBLISHED[name]
    assert train == pytest.approx(want_train, rel=5e-3)
    assert deploy == pytest.approx(want_deploy, rel=5e-3)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_train_and_eval(name):
    p6 = name in P6
    model = _model(name, head=_train_head(name))
    reg = 68 if name in DFL else 4
    sizes = [8, 4, 2, 1][: 4 if p6 else 3]
    out = model(torch.rand(2, 3, 64, 64))
    expected = ["box", "cls"] if p6 else ["box", "box_ab", "cls", "cls_ab"]
    if name in ("yolov6_n", "yolov6_s"):
        expected.append("box_dfl")
        assert [tuple(t.shape) for t in out["box_dfl"]] == [(2, 68, h, h) for h in sizes]
    assert sorted(out) == sorted(expected)
    assert [tuple(t.shape) for t in out["cls"]] == [(2, NC, h, h) for h in sizes]
    assert [tuple(t.shape) for t in out["box"]] == [(2, reg, h, h) for h in sizes]
    if not p6:
        assert out["cls_ab"][0].shape[1] == 3 * NC and out["box_ab"][0].shape[1] == 12
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 192))
    assert sorted(out) == ["box", "cls"]  # AAT is never computed at inference
    boxes, scores = model.decode(out)
    priors = 16 * 24 + 8 * 12 + 4 * 6 + (2 * 3 if p6 else 0)
    assert boxes.shape == (1, priors, 4) and scores.shape == (1, priors, NC)


def test_decode_hand_computed_at_init():
    """Predictors start at zero: box bias 1 → 1 stride to each side; class bias −log 99 → score 0.01."""
    model = _model("yolov6_n").eval()
    with torch.no_grad():
        boxes, scores = model.decode(model(torch.rand(1, 3, 64, 64)))
    assert boxes[0, 0].tolist() == pytest.approx([-4.0, -4.0, 12.0, 12.0])  # cell (0,0), stride 8, centre (4,4)
    assert boxes[0, 64].tolist() == pytest.approx([-8.0, -8.0, 24.0, 24.0])  # first cell of stride 16
    assert scores.max().item() == pytest.approx(0.01, abs=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_loss_finite_with_gradients(name):
    p6 = name in P6  # P6 models: ATSS warm-up at epoch 0 (4 epochs by default), no AAT
    model = _model(name, head=_train_head(name))
    _randomise(model)
    losses = model.loss(model(torch.rand(2, 3, 64, 64)), _targets())
    expected = {"loss_cls", "loss_iou"} if p6 else {"loss_cls", "loss_iou", "loss_cls_ab", "loss_iou_ab"}
    if name in DFL or name in ("yolov6_n", "yolov6_s"):  # DFL head, or the DLD auxiliary branch
        expected.add("loss_dfl")
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert model.head.cls_preds[0].weight.grad.abs().sum() > 0
    if not p6:
        assert model.head.reg_preds_ab[0].weight.grad.abs().sum() > 0
    stem_grads = [p.grad for p in model.backbone.stem.parameters() if p.grad is not None]
    assert stem_grads and sum(g.abs().sum() for g in stem_grads) > 0


def test_loss_with_no_objects_is_finite():
    model = _model("yolov6_n")
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model.loss(model(torch.rand(2, 3, 64, 64)), empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_iou"].item() == 0.0


def test_atss_warmup_then_tal(monkeypatch):
    model = _model("yolov6_s", atss_warmup_epochs=2)
    calls = []
    orig_atss, orig_tal = model.criterion.atss, model.criterion.tal
    monkeypatch.setattr(model.criterion, "atss", lambda *a, **k: calls.append("atss") or orig_atss(*a, **k))
    monkeypatch.setattr(model.criterion, "tal", lambda *a, **k: calls.append("tal") or orig_tal(*a, **k))
    for epoch in (0, 1, 2):
        model.set_epoch(epoch, 10)
        model.loss(model(torch.rand(2, 3, 64, 64)), _targets())
    assert calls == ["atss", "atss", "tal"]


@pytest.mark.parametrize("name", VARIANTS)
def test_reparameterize_equal_outputs_and_drops_aux(name):
    model = _randomise(_model(name, head=_train_head(name))).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        reparameterize_model(model)
        after = model(x)
    for key in ("cls", "box"):
        for a, b in zip(before[key], after[key]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    names = [n for n, _ in model.named_parameters()]
    assert not any("_ab" in n or "reg_preds_dfl" in n for n in names)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model.train()
    assert sorted(model(x)) == ["box", "cls"]  # the AAT branch is gone for good


@pytest.mark.parametrize("name", _variants(HEAVY | {"yolov6_m", "yolov6_l"}))
def test_distillation_loss_decreases(name):
    """Self-distillation toy pair: student (DLD for N/S) fits a perturbed teacher in a few steps."""
    small = name in ("yolov6_n", "yolov6_s")
    if name in ("yolov6_n6", "yolov6_s6"):
        pytest.skip("N6/S6 are not distilled (YOLOv6 recipe); no DFL distributions to distil")
    student = _model(name, head=_train_head(name) if small else None)
    teacher = _randomise(_model(name, head={"reg_max": 16} if small else None), seed=1).eval()
    x, targets = torch.rand(2, 3, 64, 64), _targets()
    with torch.no_grad():
        for conv in teacher.head.cls_preds:  # confident, class-dependent teacher scores
            conv.bias.copy_(torch.linspace(-3.0, 3.0, NC))
        t_out = teacher(x)
    params = [p for n, p in student.named_parameters() if n.startswith("head.")]
    opt = torch.optim.Adam(params, lr=1e-3)
    history = []
    for _ in range(4):
        kd = student.distill_loss(student(x), t_out, targets, weight=cosine_distill_weight(0, 10))
        assert set(kd) == {"loss_kd_cls", "loss_kd_dfl"} and kd["loss_kd_dfl"] > 0 and kd["loss_kd_cls"] > 0
        total = sum(kd.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < history[0]


def test_dld_loss_keys_and_distill_class_weights():
    n = _model("yolov6_n", head={"dld": True})
    losses = n.loss(n(torch.rand(2, 3, 64, 64)), _targets())
    assert set(losses) == {"loss_cls", "loss_iou", "loss_dfl"}
    weights = {s: cfg.distill_class_weight for s, cfg in YOLOV6_CONFIGS.items() if s in "nsml"}
    assert weights == {"n": 1.0, "s": 1.0, "m": 0.8, "l": 2.0}
    assert n.distill_temperature == 20.0


def test_p6_rejects_training_auxiliaries_and_warms_up_with_atss():
    with pytest.raises(ValueError, match="P5"):
        create_model("yolov6_n6", num_classes=2, options=variant_options("yolov6_n6", {"head": {"anchor_aided": True}}))
    assert create_model("yolov6_n6", num_classes=2).criterion.atss_warmup_epochs == 4
    assert create_model("yolov6_n", num_classes=2).criterion.atss_warmup_epochs == 0


def test_feature_distillation_term():
    model = _model("yolov6_n", head={"distill_feat": True})
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert len(out["feats"]) == 3
    same = model.distill_loss(out, {k: [t.detach() for t in v] for k, v in out.items()}, _targets())
    assert same["loss_kd_feat"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["loss_kd_cls"].item() == pytest.approx(0.0, abs=1e-4)
    other = {**out, "feats": [torch.randn_like(f) for f in out["feats"]]}
    assert model.distill_loss(out, other, _targets())["loss_kd_feat"].item() > 0


def test_dld_teacher_gives_its_distributions_to_the_dfl_kd_term():
    teacher, student = _model("yolov6_n", head={"dld": True}), _model("yolov6_n", head={"dld": True})
    x = torch.rand(2, 3, 64, 64)
    assert "box_dfl" not in teacher.eval()(x)          # plain inference never computes the DLD branch
    teacher.as_teacher()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():
        t_out = teacher(x)
    assert [m.shape[1] for m in t_out["box_dfl"]] == [68, 68, 68]
    with torch.no_grad():  # make the two DLD branches disagree, then the DFL KD term must see it
        for conv in teacher.head.reg_preds_dfl:
            conv.weight.normal_(0, 0.5)
        t_out = teacher(x)
    losses = student.distill_loss(student(x), t_out, _targets())
    assert losses["loss_kd_dfl"].item() > 0


def test_configure_distillation_sets_temperature_and_features():
    model = _model("yolov6_n")
    model.configure_distillation(temperature=4.0, feature=True)
    assert model.distill_temperature == 4.0 and "feats" in model(torch.rand(1, 3, 64, 64))
    model.configure_distillation(temperature=None, feature=False)   # None keeps the current value
    assert model.distill_temperature == 4.0 and "feats" not in model(torch.rand(1, 3, 64, 64))


def test_cosine_distill_weight():
    assert cosine_distill_weight(0, 300) == pytest.approx(1.0)
    assert cosine_distill_weight(300, 300) == pytest.approx(0.01)
    assert cosine_distill_weight(150, 300) == pytest.approx(1 - 0.99 / 2)
    assert cosine_distill_weight(75, 300) == pytest.approx(1 - 0.99 * (1 - math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("section,key", [("head", "anchor_aidd"), ("neck", "depth"), ("assigner", "topk"),
                                         ("backbone", "width")])
def test_unknown_option_key_names_it(section, key):
    with pytest.raises(ValueError, match=rf"model\.{section}\.{key}: unknown option for yolov6; expected one of"):
        variant_options("yolov6_n", {section: {key: 1}})
    with pytest.raises(TypeError, match="not a dict"):
        create_model("yolov6_n", num_classes=2, **{section: {key: 1}})


def _reference_state(model):
    mapping = reference_key_map(model)
    return {mapping[k]: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("deploy", [False, True])
def test_converter_round_trip_reference_names(tmp_path, deploy):
    src = _randomise(_model("yolov6_n")).eval()
    if deploy:
        reparameterize_model(src)
    ref = _reference_state(src)
    if not deploy:
        assert "backbone.ERBlock_2.1.conv1.rbr_dense.bn.running_var" in ref
        assert "neck.Bifusion0.upsample.upsample_transpose.weight" in ref
        assert "backbone.ERBlock_5.2.cspsppf.cv7.block.conv.weight" in ref
        assert "detect.stems.0.block.bn.weight" in ref
    else:
        assert "backbone.stem.rbr_reparam.bias" in ref and "detect.stems.0.block.conv.bias" in ref
    ref["detect.proj"] = torch.linspace(0, 16, 17)  # fixed DFL projection, ignored
    torch.save(ref, tmp_path / "ref.pt")
    dst = _model("yolov6_n")
    if deploy:
        reparameterize_model(dst)
    load_official_weights(dst, tmp_path / "ref.pt", source="yolov6").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = src(x), dst(x)
    for key in ("cls", "box"):
        for p, q in zip(a[key], b[key]):
            assert torch.equal(p, q)


def test_converter_names_mismatches(tmp_path):
    src = _model("yolov6_n")
    ref = _reference_state(src)
    ref["detect.reg_preds_dist.0.weight"] = torch.zeros(68, 32, 1, 1)
    torch.save(ref, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="reg_preds_dist"):
        load_official_weights(_model("yolov6_n"), tmp_path / "bad.pt", source="yolov6")
    ref.pop("detect.reg_preds_dist.0.weight")
    torch.save(ref, tmp_path / "other_classes.pt")
    with pytest.raises(WeightsError, match="shape"):
        load_official_weights(create_model("yolov6_n", num_classes=5), tmp_path / "other_classes.pt", source="yolov6")


def test_repvgg_fusion_hand_computed():
    """1 channel: 3×3 branch k, 1×1 branch w, identity BN γ=2, β=1, μ=0.5, σ²+ε=4 → centre k+w+1, bias 1−0.5."""
    from detmodels.layers import RepVGGBlock

    block = RepVGGBlock(1, 1).eval()
    with torch.no_grad():
        block.conv3x3.conv.weight.fill_(0.25)
        block.conv1x1.conv.weight.fill_(0.5)
        for bn in (block.conv3x3.norm, block.conv1x1.norm):
            bn.running_var.fill_(1 - bn.eps)  # BN = identity
        ident = block.identity
        ident.weight.fill_(2.0), ident.bias.fill_(1.0), ident.running_mean.fill_(0.5)
        ident.running_var.fill_(4.0 - ident.eps)
        kernel, bias = block.equivalent_kernel_bias()
    expected = torch.full((1, 1, 3, 3), 0.25)
    expected[0, 0, 1, 1] = 0.25 + 0.5 + 1.0  # γ/σ = 2/2 on the identity tap
    torch.testing.assert_close(kernel, expected)
    assert bias.item() == pytest.approx(1.0 - 0.5 * 1.0)
    assert RepVGGBlock(4, 8).identity is None and RepVGGBlock(4, 4, stride=2).identity is None
    x = torch.randn(1, 1, 5, 5)
    y = block(x)
    block.reparameterize()
    torch.testing.assert_close(block(x), y)
    assert [n for n, _ in block.named_parameters()] == ["fused.weight", "fused.bias"]
