"""Basic transforms keep boxes and masks consistent; packing normalises; collate pads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detflow.data import (Compose, LetterboxResize, PackDetInputs, Pad, RandomFlip, Resize, build_val_transforms,
                          collate_detection)
from detflow.data.transforms import flip_sample, resize_sample
from detmodels import InputSpec


def _sample(h=40, w=80, with_masks=True):
    """An h×w image with two rectangles whose masks match their boxes exactly."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w, dtype=np.uint8)[None, :]   # R varies along x
    image[..., 1] = np.arange(h, dtype=np.uint8)[:, None]   # G varies along y
    image[..., 2] = 7
    boxes = np.array([[10, 5, 30, 25], [40, 0, 80, 40]], np.float32)
    masks = np.zeros((2, h, w), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[k, y0:y1, x0:x1] = 1
    return {"image": image, "boxes": boxes, "labels": np.array([0, 2], np.int64),
            "masks": masks if with_masks else None, "image_id": 9, "orig_size": (h, w), "scale": 1.0}


def _mask_boxes(masks):
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(out, np.float32)


def test_letterbox_scale_and_padding():
    out = LetterboxResize(64)(_sample())
    # s = min(64/40, 64/80) = 0.8 -> 32x64 content, padded at the bottom with 114
    assert out["image"].shape == (64, 64, 3) and out["scale"] == pytest.approx(0.8)
    assert (out["image"][32:] == 114).all() and not (out["image"][:32, :, 2] == 114).any()
    np.testing.assert_allclose(out["boxes"], [[8, 4, 24, 20], [32, 0, 64, 32]])
    assert out["masks"].shape == (2, 64, 64) and out["masks"][:, 32:].sum() == 0
    np.testing.assert_allclose(_mask_boxes(out["masks"]), out["boxes"], atol=1)
    assert out["labels"].tolist() == [0, 2] and out["orig_size"] == (40, 80)


def test_letterbox_non_square_target_and_upscale():
    out = LetterboxResize((96, 64))(_sample(40, 80))   # (h, w): s = min(96/40, 64/80) = 0.8
    assert out["image"].shape == (96, 64, 3) and out["scale"] == pytest.approx(0.8)
    up = LetterboxResize(160)(_sample(40, 80))         # s = 2
    np.testing.assert_allclose(up["boxes"][0], [20, 10, 60, 50])
    np.testing.assert_allclose(_mask_boxes(up["masks"]), up["boxes"], atol=1)


def test_resize_keep_ratio_and_stretch():
    keep = Resize(64)(_sample())
    assert keep["image"].shape == (32, 64, 3)
    stretch = Resize((80, 40), keep_ratio=False)(_sample())
    assert stretch["image"].shape == (80, 40, 3) and stretch["scale_xy"] == pytest.approx((0.5, 2.0))
    np.testing.assert_allclose(stretch["boxes"][0], [5, 10, 15, 50])
    chained = resize_sample(resize_sample(_sample(), 20, 40), 40, 80)
    assert chained["scale"] == pytest.approx(1.0)


def test_flip_hand_computed_and_twice_is_identity():
    sample = _sample()
    once = RandomFlip(1.0)(sample)
    np.testing.assert_allclose(once["boxes"], [[50, 5, 70, 25], [0, 0, 40, 40]])
    np.testing.assert_array_equal(_mask_boxes(once["masks"]), once["boxes"])
    assert once["image"][0, 0, 0] == 79
    twice = RandomFlip(1.0)(once)
    for key in ("image", "boxes", "masks"):
        np.testing.assert_array_equal(twice[key], sample[key])
    vertical = flip_sample(sample, "vertical")
    np.testing.assert_allclose(vertical["boxes"], [[10, 15, 30, 35], [40, 0, 80, 40]])
    np.testing.assert_array_equal(_mask_boxes(vertical["masks"]), vertical["boxes"])
    assert RandomFlip(0.0)(sample) is sample
    np.testing.assert_array_equal(sample["boxes"][0], [10, 5, 30, 25])  # input untouched


def test_random_flip_is_seeded():
    runs = []
    for _ in range(2):
        flip = RandomFlip(0.5, seed=3)
        runs.append([flip(_sample(with_masks=False))["boxes"][0, 0] for _ in range(20)])
    assert runs[0] == runs[1] and len(set(runs[0])) == 2
    flip = RandomFlip(0.5, seed=3)
    flip.reseed(4)
    assert [flip(_sample(with_masks=False))["boxes"][0, 0] for _ in range(20)] != runs[0]


def test_pad_size_and_divisor():
    out = Pad((48, 96), value=0)(_sample())
    assert out["image"].shape == (48, 96, 3) and out["masks"].shape == (2, 48, 96)
    assert out["image"][40:].sum() == 0
    div = Pad(size_divisor=32, pad_value=5)(_sample(40, 80))
    assert div["image"].shape == (64, 96, 3) and (div["image"][40:] == 5).all()
    with pytest.raises(ValueError):
        Pad((10, 10))(_sample())


def test_pack_normalises_rgb_and_bgr():
    sample = _sample()
    spec = InputSpec(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    image, target, meta = PackDetInputs(spec)(sample)
    assert image.shape == (3, 40, 80) and image.dtype == torch.float32
    # pixel (y=3, x=5): RGB = (5, 3, 7)
    torch.testing.assert_close(image[:, 3, 5], torch.tensor([(5 - 10) / 2, (3 - 20) / 4, (7 - 30) / 5]))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (2, 40, 80) and target["masks"].dtype == torch.uint8
    assert meta["image_id"] == 9 and meta["orig_size"] == (40, 80) and meta["input_size"] == (40, 80)
    assert meta["pad_value"] == pytest.approx(((114 - 10) / 2, (114 - 20) / 4, (114 - 30) / 5))
    bgr = InputSpec(mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 1.0), channel_order="BGR")
    image, _, _ = PackDetInputs(bgr)(sample)
    torch.testing.assert_close(image[:, 3, 5], torch.tensor([7 - 1.0, 3 - 2.0, 5 - 3.0]))
    _, target, _ = PackDetInputs(spec)(_sample(with_masks=False))
    assert "masks" not in target


def test_val_pipeline_round_trip():
    """Boxes from the val pipeline divided by meta scale are the original boxes (letterbox rule)."""
    sample = _sample(30, 50)
    image, target, meta = build_val_transforms(64, InputSpec())(sample)
    assert image.shape == (3, 64, 64)
    torch.testing.assert_close(target["boxes"] / meta["scale"], torch.from_numpy(sample["boxes"]))
    assert Compose([LetterboxResize(64)]).transforms[0].size == (64, 64)


def test_collate_pads_to_multiple_of_32():
    spec = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 2.0, 4.0))
    pack = PackDetInputs(spec)
    a = pack(_sample(40, 50))
    b = pack(_sample(64, 30))
    images, targets, metas = collate_detection([a, b])
    assert images.shape == (2, 3, 64, 64)
    torch.testing.assert_close(images[0, :, :40, :50], a[0])
    torch.testing.assert_close(images[1, :, :, :30], b[0])
    # padding carries the normalised pad value (114 / std per channel)
    torch.testing.assert_close(images[0, :, 50:, 60], torch.tensor([[114.0] * 14, [57.0] * 14, [28.5] * 14]))
    assert targets[0]["masks"].shape == (2, 64, 64) and targets[0]["masks"][:, 40:].sum() == 0
    assert targets[0]["masks"][:, :40, :50].sum() == a[1]["masks"].sum()
    assert metas[1]["batch_input_size"] == (64, 64) and metas[1]["input_size"] == (64, 30)
    explicit, _, _ = collate_detection([a], pad_value=0.0, size_divisor=16)
    assert explicit.shape == (1, 3, 48, 64) and explicit[0, :, 45, 0].abs().sum() == 0


def test_uint8_packing_and_batch_normalisation_are_bit_identical_to_normalised_packing():
    """Training packs uint8 (pad = the raw pad value) and normalises the collated batch:
    the batch equals the collated batch of normalised packs, bit for bit, padding included."""
    from detflow.data import normalize_images

    rtmdet = dict(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395))
    for spec in (InputSpec(**rtmdet), InputSpec(channel_order="BGR", **rtmdet), InputSpec(pad_value=0.0)):
        samples = [_sample(h=40, w=50, with_masks=False), _sample(h=70, w=30, with_masks=False)]
        raw = [PackDetInputs(spec, normalize=False)(s) for s in samples]
        assert raw[0][0].dtype == torch.uint8 and raw[0][2]["pad_value"] == (spec.pad_value,) * 3
        packed = [PackDetInputs(spec)(s) for s in samples]
        batch_u8, _, _ = collate_detection(raw)
        batch_f, _, _ = collate_detection(packed)
        assert batch_u8.dtype == torch.uint8 and batch_u8.shape == batch_f.shape == (2, 3, 96, 64)
        assert torch.equal(normalize_images(batch_u8, spec), batch_f)
        assert normalize_images(batch_f, spec) is batch_f  # already normalised: untouched
