"""YOLOv3 / +ASFF / +ASFF*: counts, small forward/loss/backward/postprocess, ASFF fusion weights,
resizing rules, the reference loss on a hand-computed case, and the "asff" checkpoint key map."""
from __future__ import annotations

import math

import pytest
import torch

from detmodels import (YOLOv3ASFFNeckOptions, count_params, create_model, get_model_entry, list_models,
                       load_official_weights, variant_options)
from detmodels.families.yolov3_asff_loss import cxcywh_iou, keep_last
from detmodels.families.yolov3_asff_weights import asff_key_map
from detmodels.layers.asff import ASFF, ASFFResize, RFBBlock
from detmodels.layers.darknet import SPP, Darknet53
from detmodels.weights import WeightsError

EXPECTED = {"yolov3": 75.55, "yolov3_asff": 79.41, "yolov3_asff_rfb": 86.01}  # M params, 80 classes



@pytest.fixture(scope="module")
def asff_model():
    torch.manual_seed(0)
    return create_model("yolov3_asff", num_classes=3)


def test_registry():
    assert set(list_models("yolov3_asff")) == set(EXPECTED)
    assert all(get_model_entry(n).input_size == 608 for n in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_counts(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=80)
    got = count_params(model) / 1e6
    assert abs(got - EXPECTED[name]) / EXPECTED[name] < 0.005, f"{name}: {got:.3f} M"


def test_darknet53_count_and_strides():
    net = Darknet53()
    assert abs(count_params(net) / 1e6 - 40.58) < 0.01  # Darknet-53 without the classifier
    outs = net.eval()(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 8, 8), (1, 512, 4, 4), (1, 1024, 2, 2)]


def test_forward_loss_backward_postprocess(asff_model):
    model = asff_model.train()
    out = model(torch.randn(2, 3, 64, 64))
    hw = [(8, 8), (4, 4), (2, 2)]
    assert [tuple(t.shape) for t in out["cls"]] == [(2, 12, *s) for s in hw]
    assert [tuple(t.shape) for t in out["box"]] == [(2, 16, *s) for s in hw]
    assert [tuple(t.shape) for t in out["obj"]] == [(2, 4, *s) for s in hw]
    assert [tuple(t.shape) for t in out["wh"]] == [(2, 8, *s) for s in hw]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 34.0]]),
                "labels": torch.tensor([0, 2])}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}]
    losses = model.loss(out, targets)
    assert set(losses) == {"loss_anchor", "loss_iou", "loss_l1", "loss_obj", "loss_cls"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.heads[0].guide_wh.weight.grad.abs().sum() > 0
    assert model.heads[0].adaption.dconv.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
        boxes, scores = model.decode(out)
        dets = model.postprocess(out, [(32, 64)], score_thr=0.0)
    assert boxes.shape == (1, 4 * (64 + 16 + 4), 4) and scores.shape == (1, 336, 3)
    assert 0 < len(dets[0].boxes) <= 100 and float(dets[0].boxes[:, 3].max()) <= 32


def test_loss_hand_computed_single_gt(asff_model):
    """A 33×23 GT centred at (20, 20): best reference anchor #2 (IoU 1) → stride 8, slot 2, cell (2, 2).
    With all-zero head outputs: guided anchors equal the reference sizes, boxes equal the anchors."""
    sizes = [(8, 8), (4, 4), (2, 2)]
    c = 3
    out = {"cls": [torch.zeros(1, 4 * c, *s) for s in sizes], "box": [torch.zeros(1, 16, *s) for s in sizes],
           "obj": [torch.zeros(1, 4, *s) for s in sizes], "wh": [torch.zeros(1, 8, *s) for s in sizes]}
    gt = torch.tensor([[20 - 16.5, 20 - 11.5, 20 + 16.5, 20 + 11.5]])
    losses = asff_model.loss(out, [{"boxes": gt, "labels": torch.tensor([1])}])
    ln2 = math.log(2.0)
    scale = 2 - 33 * 23 / 64**2
    free_iou = 32 * 23 / (32 * 32 + 33 * 23 - 32 * 23)  # anchor-free slot: 4·stride = 32 square
    assert float(losses["loss_iou"]) == pytest.approx(0.0, abs=1e-6)  # decoded box == GT
    assert float(losses["loss_anchor"]) == pytest.approx(1 - free_iou**2, rel=1e-5)
    assert float(losses["loss_l1"]) == pytest.approx(scale * 2 * ln2, rel=1e-5)  # BCE(0, ½) twice; log 1 = 0
    assert float(losses["loss_cls"]) == pytest.approx(c * ln2, rel=1e-5)  # any target vs logit 0 is ln 2


def test_keep_last_and_iou_helpers():
    assert sorted(keep_last(torch.tensor([5, 3, 5, 7, 3])).tolist()) == [2, 3, 4]
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert float(cxcywh_iou(a, torch.tensor([1.0, 0.0, 2.0, 2.0]))) == pytest.approx(2 / 6)
    assert float(cxcywh_iou(a, torch.tensor([5.0, 0.0, 2.0, 2.0]))) == 0.0


@pytest.mark.parametrize("level,out_hw", [(0, (2, 2)), (1, (4, 4)), (2, (8, 8))])
def test_asff_weights_sum_to_one_per_pixel(level, out_hw):
    torch.manual_seed(level)
    asff = ASFF(level, (32, 16, 16), (32, 16, 16), out_channels=24, compress_channels=8).eval()
    feats = [torch.randn(2, 32, 2, 2), torch.randn(2, 16, 4, 4), torch.randn(2, 16, 8, 8)]
    out, w = asff(feats, return_weights=True)
    assert out.shape == (2, 24, *out_hw) and w.shape == (2, 3, *out_hw)
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(1), torch.ones(2, *out_hw))


def test_asff_resizing_rules():
    assert ASFFResize(256, 512, 2, 0).pool and ASFFResize(256, 512, 2, 0).conv.conv.stride == (2, 2)
    assert ASFFResize(512, 256, 0, 1).conv.conv.kernel_size == (1, 1) and ASFFResize(512, 256, 0, 1).scale == 2
    assert ASFFResize(256, 256, 1, 2).conv is None and ASFFResize(256, 256, 1, 2).scale == 2
    assert ASFFResize(512, 256, 0, 2).scale == 4
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(ASFFResize(4, 4, 1, 2)(x)[..., ::2, ::2], x)  # nearest ×2 without conv


def test_asff_module_counts_match_reference_geometry():
    counts = [count_params(ASFF(lv, out_channels=c)) / 1e6 for lv, c in ((0, 1024), (1, 512), (2, 256))]
    assert counts == pytest.approx([7.107, 1.915, 0.734], abs=1e-3)


def test_rfb_and_spp_shapes():
    assert tuple(RFBBlock(16)(torch.randn(1, 16, 5, 5)).shape) == (1, 16, 5, 5)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = SPP()(x)
    assert y.shape == (1, 4, 4, 4) and float(y[0, 1, 0, 0]) == 10.0  # 5×5 max around (0, 0)


def test_unknown_options_rejected():
    with pytest.raises(ValueError, match=r"model\.head\.ignore: unknown option for yolov3_asff; expected one of "
                                         r"\[ignore_thr, label_smooth\]"):
        variant_options("yolov3", {"head": {"ignore": 0.5}})
    with pytest.raises(TypeError, match="unknown option section 'asff'"):
        create_model("yolov3", asff=True)


@pytest.mark.parametrize("ref,asff,ours", [
    ("module_list.0.batch_norm.running_var", True, "backbone.stem.norm.running_var"),
    ("module_list.8.module_list.3.1.conv.weight", True, "backbone.stages.3.blocks.3.conv2.conv.weight"),
    ("module_list.11.module_list.0.0.batch_norm.bias", False, "neck.block5.conv1.norm.bias"),
    ("module_list.32.conv.weight", True, "neck.expand3.conv.weight"),
    ("module_list.32.conv.weight", False, "neck.conv3.conv.weight"),
    ("module_list.36.conv.weight", False, "neck.expand3.conv.weight"),
    ("module_list.27.batch_norm.weight", False, "fusions.1.norm.weight"),
    ("module_list.37.Feature_adaption.dconv.weight", False, "heads.0.adaption.dconv.weight"),
    ("module_list.19.conv.bias", False, "heads.2.pred.bias"),
    ("level_0_fusion.stride_level_2.batch_norm.weight", True, "fusions.2.resize.2.conv.norm.weight"),
    ("level_2_fusion.compress_level_0.conv.weight", True, "fusions.0.resize.0.conv.conv.weight"),
    ("level_1_fusion.weight_level_2.conv.weight", True, "fusions.1.weight_convs.2.conv.weight"),
    ("level_1_fusion.weight_levels.bias", True, "fusions.1.weight_levels.bias"),
    ("level_2_header.Feature_adaption.rfb.branch_3.2.weight", True, "heads.0.adaption.rfb.branches.3.2.weight"),
    ("level_0_header.guide_wh.weight", True, "heads.2.guide_wh.weight"),
    ("module_list.16.anything", True, None),
])
def test_asff_key_map(ref, asff, ours):
    assert asff_key_map(ref, asff) == ours


def test_checkpoint_kind_mismatch_is_reported(tmp_path, asff_model):
    path = tmp_path / "baseline.pth"
    torch.save({"model": {"module_list.0.conv.weight": torch.zeros(32, 3, 3, 3)}}, path)
    with pytest.raises(WeightsError, match="baseline YOLOv3 but the model has asff=True"):
        load_official_weights(asff_model, path, source="asff")
    torch.save({"module.level_0_header.guide_wh.weight": torch.zeros(8, 1024, 1, 1)}, path)
    with pytest.raises(WeightsError, match="missing"):
        load_official_weights(asff_model, path, source="asff")


def test_dropblock_masks_blocks_and_keeps_the_mean():
    from detmodels.layers.dropblock import DropBlock

    torch.manual_seed(0)
    drop = DropBlock(3, 0.9).train()
    assert drop.gamma(16) == pytest.approx(0.1 * 256 / (9 * 14**2))
    x = torch.ones(4, 8, 16, 16)
    y = drop(x)
    assert 0 < int((y == 0).sum()) < y.numel() and float(y.sum()) == pytest.approx(x.numel(), rel=1e-5)
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="odd"):
        drop.reset(2, 0.9)


@pytest.mark.parametrize("epoch,max_epochs,sizes,keep", [
    (4, 300, (1, 1, 1), 1.0), (5, 300, (1, 3, 5), 0.9), (40, 100, (3, 5, 7), 0.9), (50, 100, (7, 7, 7), 0.9),
])
def test_dropblock_schedule_of_asff_star(epoch, max_epochs, sizes, keep):
    with torch.device("meta"):
        model = create_model("yolov3_asff_rfb", num_classes=3)
    model.set_epoch(epoch, max_epochs)
    drops = (model.neck.drop5, model.neck.drop4, model.neck.drop3)
    assert tuple(d.block_size for d in drops) == sizes and all(d.keep_prob == keep for d in drops)


def test_dropblock_off_for_plain_asff_unless_asked():
    with torch.device("meta"):
        plain = create_model("yolov3_asff", num_classes=3)
        asked = create_model("yolov3_asff", num_classes=3, neck=YOLOv3ASFFNeckOptions(dropblock=True))
    plain.set_epoch(200, 300)
    asked.set_epoch(200, 300)
    assert plain.neck.drop5.keep_prob == 1.0 and asked.neck.drop5.keep_prob == 0.9
