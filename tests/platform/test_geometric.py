"""Geometric / photometric augmentations keep boxes and masks consistent (detflow.data.geometric)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from detflow.data.geometric import (
    FilterAnnotations, HSVRandomAug, MultiScaleResize, RandomAffine, RandomCrop, RandomResize,
    RandomResizeCrop, YOLOXHSVRandomAug, crop_sample, masks_to_boxes, seed_transforms,
)

_spec = importlib.util.spec_from_file_location("conftest_augment", Path(__file__).with_name("conftest_augment.py"))
aug = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aug)


def test_masks_to_boxes_pixel_edges():
    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 2:5, 3:6] = 1
    np.testing.assert_array_equal(masks_to_boxes(masks), [[3, 2, 6, 5], [0, 0, 0, 0]])


def test_random_resize_fixed_ratio_scales_boxes_and_masks():
    s = aug.rect_sample(20, 40, [(4, 2, 10, 8)])
    out = RandomResize((80, 80), ratio_range=(1.0, 1.0), keep_ratio=True, seed=0)(s)
    assert out["image"].shape == (40, 80, 3)  # min(80/40, 80/20) = 2
    np.testing.assert_allclose(out["boxes"], [[8, 4, 20, 16]])
    assert aug.box_mask_gap(out) == 0
    assert out["scale"] == pytest.approx(2.0)
    stretched = RandomResize((30, 10), ratio_range=(1.0, 1.0), keep_ratio=False, seed=0)(s)
    assert stretched["image"].shape == (10, 30, 3)


@pytest.mark.parametrize("seed", range(5))
def test_random_resize_jitter_keeps_masks_and_boxes_within_a_pixel(seed):
    s = aug.random_sample(seed + 1)
    out = RandomResize(64, ratio_range=(0.5, 2.0), seed=seed)(s)
    aug.check_consistent(out)
    assert aug.box_mask_gap(out) <= 1.0


def test_crop_sample_hand_case_and_recompute_from_mask():
    s = aug.rect_sample(40, 40, [(10, 10, 30, 30)])
    s["masks"][0, 10:30, 25:30] = 0  # mask only spans x 10..25, box still says 30
    out = crop_sample(s, 20, 5, 35, 35)
    np.testing.assert_allclose(out["boxes"], [[0, 5, 10, 25]])  # clipped box
    rec = crop_sample(s, 20, 5, 35, 35, recompute_bbox=True)
    np.testing.assert_allclose(rec["boxes"], [[0, 5, 5, 25]])  # tight box of the cropped mask
    gone = crop_sample(s, 0, 0, 8, 8)
    assert len(gone["boxes"]) == 0 and gone["masks"].shape == (0, 8, 8)


@pytest.mark.parametrize("seed", range(4))
def test_random_crop_recompute_bbox_equals_mask_box(seed):
    s = aug.random_sample(seed + 3, h=64, w=64, n=5)
    out = RandomCrop(32, recompute_bbox=True, allow_negative_crop=True, seed=seed)(s)
    assert out["image"].shape == (32, 32, 3)
    aug.check_consistent(out)
    assert aug.box_mask_gap(out) == 0


def test_random_crop_retries_until_a_box_survives():
    s = aug.rect_sample(100, 100, [(90, 90, 98, 98)])
    kept = [len(RandomCrop(20, max_tries=200, seed=k)(s)["boxes"]) for k in range(5)]
    assert kept == [1] * 5
    lost = [len(RandomCrop(20, allow_negative_crop=True, seed=k)(s)["boxes"]) for k in range(20)]
    assert 0 in lost  # a negative crop is allowed to lose the box


def test_random_resize_crop_matches_resize_then_crop():
    s = aug.random_sample(7, h=48, w=64, n=4)
    for seed in range(4):
        fused = RandomResizeCrop((96, 96), (0.5, 2.0), 40, recompute_bbox=False, seed=seed)(s)
        g = np.random.default_rng(seed)
        resize, crop = RandomResize((96, 96), (0.5, 2.0)), RandomCrop(40)
        resize.rng = crop.rng = g
        ref = crop(resize(s))
        np.testing.assert_allclose(fused["boxes"], ref["boxes"], atol=1e-4)
        np.testing.assert_array_equal(fused["masks"], ref["masks"])
        assert fused["image"].shape == ref["image"].shape
        diff = np.abs(fused["image"].astype(int) - ref["image"].astype(int))
        assert diff[2:-2, 2:-2].mean() < 2.0  # same pixels away from the window border


def test_random_affine_identity_when_no_jitter():
    s = aug.random_sample(5, h=40, w=60)
    out = RandomAffine(None, translate=0.0, scale=0.0, seed=0)(s)
    np.testing.assert_allclose(out["boxes"], s["boxes"], atol=1e-4)
    np.testing.assert_array_equal(out["masks"], s["masks"])
    assert np.abs(out["image"].astype(int) - s["image"].astype(int)).max() <= 1


@pytest.mark.parametrize("seed", range(4))
def test_random_affine_scale_translate_consistent(seed):
    s = aug.random_sample(seed + 11, h=64, w=64, n=4)
    out = RandomAffine(32, translate=0.1, scale=0.5, seed=seed)(s)
    assert out["image"].shape == (32, 32, 3)
    aug.check_consistent(out)
    assert aug.box_mask_gap(out) <= 1.0


def test_random_affine_rotation_recomputes_boxes_from_masks():
    s = aug.random_sample(21, h=64, w=64, n=3)
    out = RandomAffine(64, translate=0.0, scale=0.0, degrees=30, seed=1)(s)
    assert aug.box_mask_gap(out) == 0


def _gray(value: int) -> dict:
    return aug.rect_sample(8, 8, [(1, 1, 4, 4)], fill=value)


def test_yolox_hsv_value_shift_on_gray_matches_hand_computation():
    t = YOLOXHSVRandomAug(hue_delta=0, saturation_delta=0, value_delta=30, seed=3)
    g = np.random.default_rng(3)
    gains = np.round(g.uniform(-1, 1, 3) * g.integers(0, 2, 3) * np.array([0, 0, 30]))
    out = t(_gray(100))
    np.testing.assert_array_equal(out["image"], np.clip(100 + gains[2], 0, 255))


def test_gain_hsv_value_scale_on_gray_matches_hand_computation():
    t = HSVRandomAug(hgain=0.0, sgain=0.0, vgain=0.4, seed=5)
    r = np.random.default_rng(5).uniform(-1, 1, 3) * np.array([0, 0, 0.4]) + 1
    out = t(_gray(100))
    np.testing.assert_array_equal(out["image"], np.clip(np.round(100 * r[2]), 0, 255))
    assert out["boxes"] is not None and len(out["boxes"]) == 1


def test_filter_annotations_drops_small_and_empty():
    s = aug.rect_sample(10, 10, [(0, 0, 5, 5), (2, 2, 6, 6), (1, 1, 8, 8)])
    s["boxes"][0] = [0, 0, 0.5, 5]   # narrower than 1 px
    s["masks"][1] = 0                # empty mask
    out = FilterAnnotations((1, 1))(s)
    np.testing.assert_array_equal(out["labels"], [2])
    assert out["masks"].shape == (1, 10, 10)


def test_multiscale_resize_keeps_size_for_interval():
    t = MultiScaleResize([32, 48, 64], interval=3, seed=0)
    s = aug.rect_sample(64, 64, [(8, 8, 24, 24)])
    sizes = [t(s)["image"].shape[0] for _ in range(12)]
    groups = [sizes[i:i + 3] for i in range(0, 12, 3)]
    assert all(len(set(g)) == 1 for g in groups)
    assert set(sizes) <= {32, 48, 64}


def test_seeding_reproducible_and_worker_rederived():
    import torch

    a, b = RandomResize(64, (0.5, 2.0)), RandomResize(64, (0.5, 2.0))
    seed_transforms([a], 7)
    seed_transforms([b], 7)
    s = aug.random_sample(2)
    assert a(s)["image"].shape == b(s)["image"].shape
    torch.manual_seed(123)
    a._pid = -1  # as if the transform had been forked into a DataLoader worker
    first = a.rng.random()
    torch.manual_seed(123)
    b._pid = -1
    assert b.rng.random() == first
