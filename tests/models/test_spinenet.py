"""SpineNet + RetinaNet: counts per registered variant, small forward/loss/backward/postprocess,
spec-driven builds (YAML round trip, invalid specs), anchors, box coding, MaxIoU matching, losses."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import yaml

from detmodels import count_params, create_model, get_model_entry, list_models, variant_options
from detmodels.assigners import MaxIoUAssigner
from detmodels.families.spinenet import decode_boxes, encode_boxes, generate_anchors
from detmodels.families.spinenet_spec import SpecError, load_spec, save_spec, spec_to_dict, spinenet49_spec
from detmodels.layers.spinenet_blocks import BottleneckBlock, Resample, StochasticDepth
from detmodels.ops import huber_loss, pairwise_iou

# Published/computed parameter counts (M) with 91 classes (TF convention) and their tolerance.
EXPECTED = {"spinenet_49s": (11.27, 0.01), "spinenet_49": (28.54, 0.005), "spinenet_96": (42.97, 0.005),
            "spinenet_143": (66.96, 0.005), "spinenet_190": (163.64, 0.005)}
SMALL = [("spinenet_49s", 64), ("spinenet_49", 64)]



def _meta_model(name: str, num_classes: int = 80, spec=None, **sections):
    """``sections`` are YAML-style overrides of the variant's options."""
    extra = {} if spec is None else {"spec": spec}
    with torch.device("meta"):
        return create_model(name, num_classes, options=variant_options(name, sections), **extra)


def _targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 34.0]]), "labels": torch.tensor([0, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def test_registry_names_and_input_sizes():
    assert set(list_models("spinenet")) == {"spinenet", *EXPECTED}
    sizes = {n: get_model_entry(n).input_size for n in EXPECTED}
    assert sizes == {"spinenet_49s": 640, "spinenet_49": 640, "spinenet_96": 1024, "spinenet_143": 1280,
                     "spinenet_190": 1280}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_counts_match_reference(name):
    want, tol = EXPECTED[name]
    got = count_params(_meta_model(name, num_classes=91)) / 1e6
    assert abs(got - want) / want < tol, f"{name}: {got:.3f} M vs {want} M"


def test_80_classes_subtract_the_class_predictor_difference():
    m91, m80 = _meta_model("spinenet_49", num_classes=91), _meta_model("spinenet_49", num_classes=80)
    assert count_params(m91) - count_params(m80) == 11 * 9 * (9 * 256 + 1)


def test_49s_endpoint_width_is_a_setting():
    m = _meta_model("spinenet_49s", num_classes=91, backbone={"endpoints_num_filters": 256})
    assert abs(count_params(m) / 1e6 - 11.94) < 0.01  # the model zoo's 11.9 M; the head stays 128 wide
    assert m.head.cls_pred.in_channels == 128 and m.backbone.out_channels == [256] * 5


@pytest.mark.parametrize("name,size", SMALL)
def test_forward_loss_backward_postprocess(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    out = model(torch.randn(2, 3, size, size))
    sizes = [(-(-size // 2**lv),) * 2 for lv in range(3, 8)]
    assert [tuple(t.shape) for t in out["cls"]] == [(2, 27, *s) for s in sizes]
    assert [tuple(t.shape) for t in out["box"]] == [(2, 36, *s) for s in sizes]
    losses = model.loss(out, _targets())
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"] > 0
    sum(losses.values()).backward()
    assert model.backbone.stem.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
        boxes, scores = model.decode(out)
        dets = model.postprocess(out, [(size // 2, size)], score_thr=0.0)
    assert boxes.shape == (1, sum(h * w * 9 for h, w in sizes), 4) and scores.shape[-1] == 3
    assert 0 < len(dets[0].boxes) <= 100 and float(dets[0].boxes[:, 3].max()) <= size // 2


def test_swish_bn_settings_and_head_sharing():
    m = _meta_model("spinenet_49s", num_classes=3)
    bn = m.backbone.stem.norm
    assert (bn.momentum, bn.eps) == (0.01, 1e-3) and isinstance(m.backbone.stem.act, torch.nn.SiLU)
    assert len(m.head.cls_convs) == 4 and len(m.head.cls_norms) == 5  # convs shared, BN per level
    assert m.head.cls_convs[0].bias is not None
    assert dataclasses.astuple(m.backbone.scale) == (0.65, 1, 0.5, 128)


def test_stochastic_depth_is_linear_in_block_index():
    m = _meta_model("spinenet_49", num_classes=3)
    rates = [blk.blocks[0].drop.rate for blk in m.backbone.blocks]
    assert rates == pytest.approx([0.2 * (i + 1) / 15 for i in range(15)])
    assert m.backbone.stem_blocks[0][0].drop.rate == 0.0


def test_merged_zero_out_degree_block_is_summed_into_l5():
    m = _meta_model("spinenet_49", num_classes=3)
    assert m.backbone._merged[14] == [11]


def test_generic_builder_from_yaml_round_trip(tmp_path):
    spec = dataclasses.replace(spinenet49_spec(), name="nas-candidate")
    data = spec_to_dict(spec)
    data["scale"] = {"filter_size_scale": 0.25, "block_repeats": 1, "resample_alpha": 0.5, "endpoints_num_filters": 64}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    model = create_model("spinenet", num_classes=3, spec=str(path))
    assert model.backbone.stem_blocks[0][0].conv1.conv.out_channels == 16  # int(64 · 0.25)
    assert model.head.cls_pred.in_channels == 64
    out_path = save_spec(model.backbone.spec, tmp_path / "out.yaml")
    assert yaml.safe_load(out_path.read_text()) == data
    assert load_spec(out_path) == model.backbone.spec
    out = model(torch.randn(2, 3, 64, 64))  # batch 2: L6/L7 are 1×1 and training BN needs >1 value
    assert len(out["cls"]) == 5 and torch.isfinite(sum(model.loss(out, _targets()).values()))


def test_generic_builder_accepts_dict_and_spec_objects():
    spec = spinenet49_spec()
    d = spec_to_dict(spec)
    a = _meta_model("spinenet", num_classes=91, spec=d)
    b = _meta_model("spinenet", num_classes=91, spec=spec)
    assert count_params(a) == count_params(b) == count_params(_meta_model("spinenet_49", num_classes=91))


def test_invalid_spec_names_block_and_rule():
    data = spec_to_dict(spinenet49_spec())
    data["blocks"][5]["inputs"] = [3, 12]
    with pytest.raises(SpecError, match=r"block 7 \(L4 bottleneck\): input 12 must be an earlier block"):
        create_model("spinenet", num_classes=2, spec=data)


def test_unknown_section_keys_rejected():
    with pytest.raises(ValueError, match=r"model\.head\.num_conv: unknown option for spinenet"):
        variant_options("spinenet_49s", {"head": {"num_conv": 3}})
    with pytest.raises(ValueError, match=r"model\.neck: unknown option for spinenet; expected one of \[backbone, head"):
        variant_options("spinenet_49s", {"neck": {"fpn": True}})
    with pytest.raises(TypeError, match="unknown option section 'spec'"):
        create_model("spinenet_49", spec="x.yaml")


def test_resample_paths_shapes_and_widths():
    down = Resample(256, "bottleneck", 2, 1024, 5, 0.5)  # 1×1 to 32, stride-2 conv, two max-pools
    assert down.reduce.conv.out_channels == 32 and down.num_pools == 2
    assert tuple(down(torch.randn(1, 256, 16, 16), (2, 2)).shape) == (1, 1024, 2, 2)
    up = Resample(256, "residual", 6, 512, 3, 1.0).eval()
    assert up.down is None and tuple(up(torch.randn(1, 256, 1, 1), (8, 8)).shape) == (1, 512, 8, 8)


def test_stochastic_depth_drops_whole_samples():
    torch.manual_seed(0)
    sd = StochasticDepth(0.5).train()
    y = sd(torch.ones(64, 2, 3, 3))
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert bool((per_sample == per_sample[:, :1]).all())
    assert torch.equal(sd.eval()(torch.ones(2, 2)), torch.ones(2, 2))


def test_bottleneck_projection_only_when_widths_differ():
    assert BottleneckBlock(64, 64, projection=True).shortcut is not None
    assert BottleneckBlock(256, 64).shortcut is None


def test_anchors_hand_computed():
    a = generate_anchors([(1, 2)], [8], anchor_size=3.0)
    assert a.shape == (18, 4)
    torch.testing.assert_close(a[0], torch.tensor([-8.0, -8.0, 16.0, 16.0]))  # 24×24 at (4, 4)
    w, h = 24 * math.sqrt(2), 24 / math.sqrt(2)  # ratio 2 = w/h
    torch.testing.assert_close(a[1], torch.tensor([4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2]))
    s = 24 * 2 ** (2 / 3)  # third octave, ratio 1
    torch.testing.assert_close(a[6], torch.tensor([4 - s / 2, 4 - s / 2, 4 + s / 2, 4 + s / 2]))
    torch.testing.assert_close(a[9], a[0] + torch.tensor([8.0, 0, 8, 0]))  # next column


def test_box_coding_round_trip_and_tf_order():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    boxes = torch.tensor([[2.0, 4.0, 12.0, 44.0]])
    d = encode_boxes(boxes, anchors)
    torch.testing.assert_close(d, torch.tensor([[(24 - 10) / 20, (7 - 5) / 10, math.log(2.0), 0.0]]))
    torch.testing.assert_close(decode_boxes(d, anchors), boxes)


def test_max_iou_assigner_hand_cases():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.5], [100, 100, 110, 110]])
    res = MaxIoUAssigner(0.5, 0.4, force_match=False).assign(anchors, torch.tensor([[0.0, 0, 10, 10]]))
    assert res.gt_index.tolist() == [0, 0, -2, -1]  # IoU 1, 0.5, 0.45 (ignored), 0
    far = torch.tensor([[104.0, 104, 120, 120]])  # best IoU 36/(100+256-36) < 0.5 → forced
    assert MaxIoUAssigner().assign(anchors, far).gt_index.tolist() == [-1, -1, -1, 0]
    assert MaxIoUAssigner().assign(anchors, torch.zeros(0, 4)).gt_index.tolist() == [-1] * 4


def test_huber_tf_convention():
    got = huber_loss(torch.tensor([0.05, 0.3, -0.3]), torch.zeros(3), delta=0.1)
    torch.testing.assert_close(got, torch.tensor([0.5 * 0.05**2, 0.1 * (0.3 - 0.05), 0.1 * (0.3 - 0.05)]))


def test_retinanet_loss_hand_computed_with_constant_outputs():
    model = create_model("spinenet", num_classes=2, spec={**spec_to_dict(spinenet49_spec()),
                                                        "scale": {"filter_size_scale": 0.25,
                                                                  "endpoints_num_filters": 16}})
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    logit = -2.0
    out = {"cls": [torch.full((1, 18, *s), logit) for s in sizes], "box": [torch.zeros(1, 36, *s) for s in sizes]}
    anchors = generate_anchors(sizes, model.strides, 3.0)
    gt = anchors[9 * 10].clone()  # exactly the first anchor of cell (1, 2) of L3
    num_pos = int((pairwise_iou(gt[None], anchors)[0] >= 0.5).sum())
    p = 1 / (1 + math.exp(-logit))
    f_pos = 0.25 * (1 - p) ** 1.5 * -math.log(p)
    f_neg = 0.75 * p**1.5 * -math.log(1 - p)
    n = anchors.shape[0]
    want_cls = (num_pos * f_pos + (num_pos * 1 + (n - num_pos) * 2) * f_neg) / (num_pos + 1)
    losses = model.loss(out, [{"boxes": gt[None], "labels": torch.tensor([1])}])
    assert num_pos >= 2
    assert float(losses["loss_cls"]) == pytest.approx(want_cls, rel=1e-5)
    # Box loss: 0 for the identical anchor; positive for the others, scaled by 50 / (4 · (P + 1)).
    assert float(losses["loss_box"]) > 0
