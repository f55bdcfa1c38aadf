"""The contract every registered detector keeps, parametrised over ``detmodels.list_models()``.

Every variant (meta device, no memory or init cost): entry metadata, typed options and their YAML
round trip, meta-device build, forward keys and per-level layouts. The smallest variant of each
(family, task, number of levels), on real tensors at a tiny input: ``loss_*`` keys, decode and
postprocess shapes and types, re-parameterization equivalence, every trainable parameter reaching
the loss. A new variant is covered by registering it.
"""
from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
import yaml

import detmodels
from detmodels import Detections, option_paths, options_from_dict, options_to_dict

NUM_CLASSES = 3
ALL = detmodels.list_models()


@functools.lru_cache(maxsize=None)
def _meta(name: str) -> detmodels.Detector:
    with torch.device("meta"):
        return detmodels.create_model(name, num_classes=NUM_CLASSES).eval()


def _input_size(model: detmodels.Detector) -> int:
    return max(64, max(model.strides))


@functools.lru_cache(maxsize=None)
def _smallest() -> list[str]:
    """The variant with the fewest parameters per (family, task, number of output levels)."""
    best: dict[tuple, tuple[int, str]] = {}
    for name in ALL:
        model, entry = _meta(name), detmodels.get_model_entry(name)
        key = (entry.family, entry.task, len(model.strides))
        count = detmodels.count_params(model)
        best[key] = min(best.get(key, (count, name)), (count, name))
    return sorted(name for _, name in best.values())


SMALL = _smallest()
# Training-only branches add parameters and outputs: checked on top of the defaults.
EXTRA = [("yolov6_n", {"head": {"anchor_aided": True, "dld": True}})]


def _real(name: str, overrides: dict | None = None) -> detmodels.Detector:
    torch.manual_seed(0)
    return detmodels.create_model(name, num_classes=NUM_CLASSES, options=detmodels.variant_options(name, overrides))


def _targets(size: int, segm: bool, empty: bool = False) -> list[dict]:
    boxes = torch.zeros(0, 4) if empty else torch.tensor([[4.0, 4.0, 28.0, 30.0], [20.0, 12.0, 60.0, 60.0]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 2][: len(boxes)], dtype=torch.long)}
    if segm:
        masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        target["masks"] = masks
    return [target, {k: v.clone() for k, v in target.items()}]


# ---------------------------------------------------------------------------- every variant
def test_registry_is_covered():
    assert len(ALL) >= 27 and set(SMALL) <= set(ALL)
    assert {detmodels.get_model_entry(n).family for n in SMALL} == {detmodels.get_model_entry(n).family for n in ALL}


@pytest.mark.parametrize("name", ALL)
def test_entry_declares_options_size_and_recipe(name):
    entry = detmodels.get_model_entry(name)
    assert dataclasses.is_dataclass(entry.options) and isinstance(entry.default_options, entry.options)
    assert entry.options.__dataclass_params__.frozen
    assert entry.size and entry.recipe in {"rtmdet", "rtmdet_ins", "yolov6", "retinanet", "yolov3_asff"}
    assert entry.task in ("bbox", "segm")


@pytest.mark.parametrize("name", ALL)
def test_options_round_trip_through_yaml(name):
    entry = detmodels.get_model_entry(name)
    opts = entry.default_options
    text = yaml.safe_dump(options_to_dict(opts))
    again = options_from_dict(entry.options, yaml.safe_load(text), base=entry.options())
    assert again == opts
    # every dotted path names a leaf of the YAML form
    data = yaml.safe_load(text)
    for path in option_paths(entry.options):
        node = data
        for part in path.split("."):
            node = node[part]
        assert not isinstance(node, dict), path


@pytest.mark.parametrize("name", ALL)
def test_meta_build_and_forward_layout(name):
    model = _meta(name)
    assert isinstance(model, detmodels.Detector) and model.num_classes == NUM_CLASSES
    assert all(p.device.type == "meta" for p in model.parameters())
    size = _input_size(model)
    with torch.device("meta"):
        out = model(torch.zeros(2, 3, size, size))
    assert {"cls", "box"} <= set(out)
    for key, value in out.items():
        if key == "mask_feat":  # RTMDet-Ins prototypes at stride 8
            assert value.shape[0] == 2 and value.shape[-2:] == (size // 8, size // 8)
            continue
        assert isinstance(value, list) and len(value) == len(model.strides), key
        for level, (t, stride) in enumerate(zip(value, model.strides)):
            assert t.dim() == 4 and t.shape[0] == 2 and t.shape[-2:] == (size // stride, size // stride), (key, level)
    assert all(t.shape[1] % NUM_CLASSES == 0 for t in out["cls"])


@pytest.mark.parametrize("name", ALL)
def test_default_options_build_the_default_model(name):
    entry = detmodels.get_model_entry(name)
    with torch.device("meta"):
        again = detmodels.create_model(name, num_classes=NUM_CLASSES, options=entry.default_options)
    assert detmodels.count_params(again) == detmodels.count_params(_meta(name))
    with pytest.raises(TypeError, match="not a dict"):
        detmodels.create_model(name, num_classes=NUM_CLASSES, head={})


# ---------------------------------------------------------------------------- smallest variants, real tensors
@pytest.mark.parametrize("name,overrides", [(n, None) for n in SMALL] + EXTRA)
@pytest.mark.parametrize("empty", [False, True], ids=["gt", "no_gt"])
def test_loss_keys_and_every_parameter_reaches_the_loss(name, overrides, empty):
    """What lets DDP run with ``find_unused_parameters=False``: one backward of ``loss`` gives every
    parameter a gradient, with and without ground truth (a level or branch without positives too)."""
    model = _real(name, overrides).train()
    assert not model.has_unused_train_params
    size = _input_size(model)
    losses = model.loss(model(torch.randn(2, 3, size, size)), _targets(size, model.task == "segm", empty))
    assert losses and all(k.startswith("loss_") for k in losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("name", SMALL)
def test_decode_and_postprocess_shapes_and_types(name):
    model = _real(name).eval()
    size = _input_size(model)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
        boxes, scores = model.decode(out)
        dets = model.postprocess(out, [(size, size), (size // 2, size)], score_thr=0.0, max_det=10)
    assert boxes.shape[:2] == scores.shape[:2] and boxes.shape[0] == 2 and boxes.shape[-1] == 4
    assert scores.shape[-1] == NUM_CLASSES and scores.dtype == torch.float32
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    for d, (h, w) in zip(dets, [(size, size), (size // 2, size)]):
        k = d.boxes.shape[0]
        assert 0 < k <= 10 and d.boxes.shape == (k, 4) and d.scores.shape == (k,) and d.labels.shape == (k,)
        assert d.labels.dtype == torch.long and d.scores.dtype.is_floating_point
        assert bool((d.labels < NUM_CLASSES).all())
        if model.task == "segm":
            assert d.masks is not None and d.masks.shape == (k, h, w) and d.masks.dtype == torch.bool
        else:
            assert d.masks is None


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so that folding them is actually exercised."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


@pytest.mark.parametrize("name", SMALL)
def test_reparameterization_keeps_eval_outputs(name):
    model = _real(name).eval()
    with torch.no_grad():
        _randomise_norms(model)
        size = _input_size(model)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
        before = model(x)
        fused = detmodels.reparameterize_model(copy.deepcopy(model))
        after = fused(x)
    assert not fused.training
    for key in ("cls", "box"):
        for a, b in zip(before[key], after[key]):
            torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
