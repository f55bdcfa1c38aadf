"""RTMDet / RTMDet-Ins: registry, sizes, forward/loss/backward/postprocess, options, weight import."""
import pytest
import torch

import detmodels
from detmodels import count_macs, count_params
from detmodels.families.rtmdet_weights import detmodels_to_mmdet_key
from detmodels.weights import WeightsError

NAMES = [f"rtmdet_{s}" for s in ("tiny", "s", "m", "l", "x")] + [f"rtmdet_ins_{s}" for s in ("tiny", "s", "m", "l", "x")]
SMALL = ["rtmdet_tiny", "rtmdet_s", "rtmdet_ins_tiny", "rtmdet_ins_s"]
# Parameter counts (M, 80 classes) from the table (arXiv 2212.07784 / mmdetection README).
PARAMS_M = {"rtmdet_tiny": 4.896, "rtmdet_s": 8.887, "rtmdet_m": 24.709, "rtmdet_l": 52.316, "rtmdet_x": 94.856,
            "rtmdet_ins_tiny": 5.638, "rtmdet_ins_s": 10.183, "rtmdet_ins_m": 27.575, "rtmdet_ins_l": 57.366,
            "rtmdet_ins_x": 102.704}



def _targets(num_classes: int = 3, size: int = 64):
    masks0 = torch.zeros(1, size, size, dtype=torch.uint8)
    masks0[0, 10:40, 8:30] = 1
    masks1 = torch.zeros(2, size, size, dtype=torch.uint8)
    masks1[0, 20:60, 30:62] = 1
    masks1[1, 0:20, 0:20] = 1
    return [
        {"boxes": torch.tensor([[8.0, 10, 30, 40]]), "labels": torch.tensor([1]), "masks": masks0},
        {"boxes": torch.tensor([[30.0, 20, 62, 60], [0, 0, 20, 20]]), "labels": torch.tensor([0, num_classes - 1]),
         "masks": masks1},
    ]


def test_registry_lists_every_variant():
    assert detmodels.list_models("rtmdet") == sorted(NAMES)
    for name in NAMES:
        entry = detmodels.get_model_entry(name)
        assert (entry.family, entry.task, entry.input_size) == ("rtmdet", "segm" if "ins" in name else "bbox", 640)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_paper(name):
    model = detmodels.create_model(name)
    assert count_params(model) / 1e6 == pytest.approx(PARAMS_M[name], rel=0.005)
    assert model.input_spec.channel_order == "BGR" and model.input_spec.mean == (103.53, 116.28, 123.675)


@pytest.mark.parametrize("name, gmacs", [("rtmdet_tiny", 8.04), ("rtmdet_ins_tiny", 11.87)])
def test_macs_match_paper(name, gmacs):
    # conv MACs scale with the area: 4 × the count at 320 equals the count at 640
    assert 4 * count_macs(detmodels.create_model(name), 320) / 1e9 == pytest.approx(gmacs, rel=0.02)


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {name: detmodels.create_model(name, num_classes=3) for name in SMALL}


@pytest.mark.parametrize("name", SMALL)
def test_forward_loss_backward(name, small_models):
    model = small_models[name].train()
    model.zero_grad()
    out = model(torch.randn(2, 3, 64, 64))
    assert [tuple(t.shape) for t in out["cls"]] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    assert [tuple(t.shape) for t in out["box"]] == [(2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)]
    if "ins" in name:
        assert [tuple(t.shape) for t in out["kernel"]] == [(2, 169, 8, 8), (2, 169, 4, 4), (2, 169, 2, 2)]
        assert tuple(out["mask_feat"].shape) == (2, 8, 8, 8)
    losses = model.loss(out, _targets())
    assert set(losses) == ({"loss_cls", "loss_bbox", "loss_mask"} if "ins" in name else {"loss_cls", "loss_bbox"})
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


@pytest.mark.parametrize("name", ["rtmdet_tiny", "rtmdet_ins_tiny"])
def test_loss_with_an_image_without_objects(name, small_models):
    model = small_models[name].train()
    out = model(torch.randn(2, 3, 64, 64))
    targets = _targets()
    targets[0] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                  "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    losses = model.loss(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = [targets[0], targets[0]]
    losses = model.loss(out, empty)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()


def test_head_sharing_follows_the_reference():
    det = detmodels.create_model("rtmdet_tiny").bbox_head
    ins = detmodels.create_model("rtmdet_ins_tiny").bbox_head
    for head in (det, ins):  # convs shared across levels, BN per level
        assert head.cls_convs[1][0].conv is head.cls_convs[0][0].conv
        assert head.cls_convs[1][0].norm is not head.cls_convs[0][0].norm
    assert det.reg_convs is not det.cls_convs
    assert ins.reg_convs is ins.cls_convs  # RTMDet-Ins quirk: the reg tower is the cls tower
    assert ins.kernel_convs[1][0].conv is not ins.kernel_convs[0][0].conv


@pytest.mark.parametrize("name", ["rtmdet_tiny", "rtmdet_ins_tiny"])
def test_autocast_bf16(name, small_models):
    model = small_models[name].train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
        losses = model.loss(out, _targets())
    assert out["cls"][0].dtype == torch.bfloat16
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("name", ["rtmdet_tiny", "rtmdet_ins_tiny"])
def test_postprocess_random_outputs(name, small_models):
    model = small_models[name].eval()
    torch.manual_seed(1)
    out = {"cls": [torch.randn(2, 3, s, s) for s in (8, 4, 2)], "box": [torch.rand(2, 4, s, s) * 20 for s in (8, 4, 2)]}
    if "ins" in name:
        out["kernel"] = [torch.randn(2, 169, s, s) for s in (8, 4, 2)]
        out["mask_feat"] = torch.randn(2, 8, 8, 8)
    dets = model.postprocess(out, [(64, 64), (32, 48)], score_thr=0.3, nms_iou=0.6, max_det=20)
    boxes, scores = model.decode(out)
    assert boxes.shape == (2, 84, 4) and scores.shape == (2, 84, 3)
    for d, (h, w), scale in zip(dets, [(64, 64), (32, 48)], [1.0, 4 / 3]):
        assert 0 < len(d.scores) <= 20 and (d.scores > 0.3).all()
        assert (d.boxes[:, 0::2] <= w).all() and (d.boxes[:, 1::2] <= h).all() and (d.boxes >= 0).all()
        assert d.labels.max() < 3
        if "ins" in name:
            assert d.masks.shape == (len(d.scores), h, w) and d.masks.dtype == torch.bool
        else:
            assert d.masks is None
    # the top detection of image 0 is the best-scoring (prior, class) pair, its box decoded exactly
    best = scores[0].flatten().argmax()
    torch.testing.assert_close(dets[0].boxes[0], boxes[0, best // 3].clamp(0, 64))


def test_neck_options_and_unknown_keys():
    neck = detmodels.RTMDetNeckOptions
    base = count_params(detmodels.create_model("rtmdet_tiny"))
    wide = detmodels.create_model("rtmdet_tiny", neck=neck(expand_ratio=0.75))
    assert count_params(wide) > base
    assert wide.neck.top_down_blocks[0].main_conv.conv.out_channels == int(192 * 0.75)
    narrow = detmodels.create_model("rtmdet_tiny", neck=neck(expand_ratio=0.25))
    assert narrow.neck.top_down_blocks[0].main_conv.conv.out_channels == 48
    model = detmodels.create_model("rtmdet_tiny", num_classes=2, neck=neck(se=True, ppm=True))
    assert len(model.neck.se_layers) == 4 and model.neck.ppm is not None
    out = model(torch.randn(1, 3, 64, 64))
    assert out["cls"][0].shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"model\.neck\.expansion: unknown option for rtmdet; expected one of "
                                         r"\[expand_ratio, se, ppm\]"):
        detmodels.variant_options("rtmdet_s", {"neck": {"expansion": 0.5}})
    with pytest.raises(ValueError, match=r"model\.assigner\.radius: unknown option for rtmdet"):
        detmodels.variant_options("rtmdet_s", {"assigner": {"radius": 3}})
    with pytest.raises(TypeError, match="'bogus'"):
        detmodels.create_model("rtmdet_s", bogus=1)
    with pytest.raises(TypeError, match="RTMDetNeckOptions"):
        detmodels.create_model("rtmdet_s", neck={"expand_ratio": 0.5})
    with pytest.raises(ValueError, match=r"expand_ratio: expected a number > 0 and <= 2, got 3"):
        neck(expand_ratio=3)


def test_assigner_options_reach_the_model():
    dsl = detmodels.DSLOptions(soft_center_alpha=4.0, soft_center_beta=2.0, topk=9, iou_weight=1.5)
    model = detmodels.create_model("rtmdet_ins_tiny", assigner=dsl)
    a = model.assigner
    assert (a.soft_center_alpha, a.soft_center_beta, a.topk, a.iou_weight) == (4.0, 2.0, 9, 1.5)


def _save_mmdet_checkpoint(model, path):
    """A checkpoint in mmdetection's layout, made from our own (perturbed) weights."""
    with torch.no_grad():
        for v in model.state_dict().values():  # shared tensors appear under several keys: same values
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.01)
    state = {detmodels_to_mmdet_key(k): v.clone() for k, v in model.state_dict().items()}
    torch.save({"meta": {}, "state_dict": state}, path)
    return state


@pytest.mark.parametrize("name", ["rtmdet_tiny", "rtmdet_ins_tiny"])
def test_mmdet_converter_round_trip(name, tmp_path):
    src = detmodels.create_model(name, num_classes=3)
    state = _save_mmdet_checkpoint(src, tmp_path / "ckpt.pth")
    assert "backbone.stem.0.bn.running_mean" in state and "bbox_head.cls_convs.1.0.conv.weight" in state
    dst = detmodels.load_official_weights(detmodels.create_model(name, num_classes=3), tmp_path / "ckpt.pth", "mmdet")
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[detmodels_to_mmdet_key(k)]), k
    # shared head convs stay shared after loading
    assert dst.bbox_head.cls_convs[2][0].conv.weight is dst.bbox_head.cls_convs[0][0].conv.weight


def test_mmdet_converter_errors(tmp_path):
    model = detmodels.create_model("rtmdet_tiny", num_classes=3)
    state = {detmodels_to_mmdet_key(k): v for k, v in model.state_dict().items()}
    missing = dict(state)
    del missing["neck.out_convs.2.bn.weight"]
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"not in checkpoint: neck\.out_convs\.2\.norm\.weight"):
        detmodels.load_official_weights(model, tmp_path / "missing.pth", "mmdet")
    extra = dict(state, **{"bbox_head.rtm_obj.0.weight": torch.zeros(1)})
    torch.save({"state_dict": extra}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unused: bbox_head\.rtm_obj\.0\.weight"):
        detmodels.load_official_weights(model, tmp_path / "extra.pth", "mmdet")
    torch.save({"state_dict": state}, tmp_path / "ok.pth")
    with pytest.raises(WeightsError, match=r"shape mismatches: bbox_head\.rtm_cls\.0\.weight"):
        detmodels.load_official_weights(detmodels.create_model("rtmdet_tiny", num_classes=80), tmp_path / "ok.pth")


def _synthetic_batch(size: int = 128):
    """Two noise images with coloured rectangles (one class per colour)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g) * 0.3
    boxes = [torch.tensor([[20.0, 30, 70, 90], [80, 10, 120, 50]]), torch.tensor([[10.0, 60, 60, 120]])]
    labels = [torch.tensor([0, 1]), torch.tensor([1])]
    colours = torch.tensor([[2.0, -1.0, 0.0], [-1.0, 2.0, 1.0]])
    for i, (bb, ll) in enumerate(zip(boxes, labels)):
        for b, lab in zip(bb.long(), ll):
            images[i, :, b[1]:b[3], b[0]:b[2]] = colours[lab][:, None, None]
    return images, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]


OVERFIT_STEPS, PEAK_WINDOW = 120, 20


@pytest.mark.slow
def test_rtmdet_tiny_overfits_two_images():
    torch.manual_seed(0)
    images, targets = _synthetic_batch()
    model = detmodels.create_model("rtmdet_tiny", num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    history = []
    for _ in range(OVERFIT_STEPS):
        losses = model.loss(model(images), targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    # RTMDet's losses start near 0 (boxes start at zero size, so IoU targets are ~0) and rise
    # as boxes grow: measure the fall from the peak of the first steps.
    assert sum(history[-5:]) / 5 < max(history[:PEAK_WINDOW]) / 10, history


def test_dynamic_kernel_layout_hand_computed():
    """169 values = weights [10→8 (80), 8→8 (64), 8→1 (8)] then biases [8, 8, 1]; inputs are
    [rel_x, rel_y, 8 prototypes] with rel = (prior − grid point) / (8 · prior stride)."""
    from detmodels.families.rtmdet_heads import dynamic_mask_logits

    k = torch.zeros(1, 169)
    k[0, 0 * 10 + 0] = 1.0          # layer 1, out 0 ← rel_x
    k[0, 1 * 10 + 2] = 1.0          # layer 1, out 1 ← prototype 0
    k[0, 80 + 0 * 8 + 0] = 1.0      # layer 2, out 0 ← layer-1 out 0
    k[0, 80 + 1 * 8 + 1] = 1.0      # layer 2, out 1 ← layer-1 out 1
    k[0, 144 + 0] = 1.0             # layer 3 ← layer-2 out 0
    k[0, 144 + 1] = -2.0            # layer 3 ← layer-2 out 1
    k[0, 168] = 0.25                # layer 3 bias
    mask_feat = torch.zeros(8, 2, 3)
    mask_feat[0] = 3.0
    prior = torch.tensor([[16.0, 8.0, 16.0]])  # point (16, 8), stride 16
    logits = dynamic_mask_logits(mask_feat, k, prior, mask_stride=8)
    grid_x = torch.tensor([0.0, 8.0, 16.0])
    rel_x = ((16.0 - grid_x) / (8 * 16)).clamp(min=0)  # ReLU after layers 1 and 2
    torch.testing.assert_close(logits[0], (rel_x - 2 * 3.0 + 0.25).expand(2, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["rtmdet_tiny", "rtmdet_ins_tiny"])
def test_cuda_fp16_autocast(name):
    model = detmodels.create_model(name, num_classes=3).cuda().train()
    targets = [{k: v.cuda() for k, v in t.items()} for t in _targets()]
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(torch.randn(2, 3, 64, 64, device="cuda"))
        losses = model.loss(out, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        dets = model.postprocess(model(torch.randn(1, 3, 64, 64, device="cuda")), [(64, 64)], score_thr=0.0)
    assert dets[0].boxes.device.type == "cuda"
