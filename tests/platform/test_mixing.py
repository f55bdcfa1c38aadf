"""Mosaic / MixUp / cached forms / CutMix / Copy-Paste (detflow.data.mixing)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from detflow.data.imageops import TiledCanvas
from detflow.data.mixing import (
    CachedMixUp, CachedMosaic, CopyPaste, CutMix, MixUp, Mosaic, copy_paste_pair, cutmix_pair,
)

_spec = importlib.util.spec_from_file_location("conftest_augment", Path(__file__).with_name("conftest_augment.py"))
aug = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aug)


def _dataset(n: int = 8) -> "aug.ListDataset":
    return aug.ListDataset([aug.random_sample(i + 1) for i in range(n)])


# --------------------------------------------------------------------------- Mosaic
def test_mosaic_fixed_centre_places_tiles_in_quadrants():
    tiles = [aug.rect_sample(40, 40, [(5, 5, 15, 15)], image_id=k + 1, fill=50 * (k + 1)) for k in range(4)]
    out = Mosaic(40, center_ratio_range=(1.0, 1.0), seed=0).combine(tiles)
    assert out["image"].shape == (80, 80, 3) and out["image_id"] == 1
    assert out["image"][10, 10, 0] == 50 and out["image"][10, 60, 0] == 100
    assert out["image"][60, 10, 0] == 150 and out["image"][60, 60, 0] == 200
    np.testing.assert_allclose(out["boxes"], [[5, 5, 15, 15], [45, 5, 55, 15], [5, 45, 15, 55], [45, 45, 55, 55]])
    assert aug.box_mask_gap(out) == 0


@pytest.mark.parametrize("seed", range(5))
def test_mosaic_random_centre_boxes_match_masks(seed):
    ds = _dataset()
    t = Mosaic(32, seed=seed)
    t.attach(ds)
    out = t(ds.load_sample(seed))
    assert out["image"].shape == (64, 64, 3)
    aug.check_consistent(out)
    assert aug.box_mask_gap(out) <= 0.5  # nearest-resized masks vs scaled boxes


def test_mosaic_without_masks_and_needs_dataset():
    s = aug.random_sample(1)
    s["masks"] = None
    t = Mosaic(32, seed=0)
    with pytest.raises(RuntimeError, match="attach"):
        t(s)
    t.attach(aug.ListDataset([s] * 3))
    out = t(s)
    assert out["masks"] is None and out["image"].shape == (64, 64, 3)


@pytest.mark.parametrize("seed", range(3))
def test_lazy_mosaic_is_the_undrawn_canvas_and_draws_mosaics_with_masks(seed):
    samples = [aug.random_sample(k + 1, h=30 + 7 * k, w=50 - 5 * k) for k in range(4)]
    bare = [{**s, "masks": None} for s in samples]
    drawn = Mosaic(32, seed=seed).combine(bare)
    lazy = Mosaic(32, lazy=True, seed=seed).combine(bare)
    assert isinstance(lazy["image"], TiledCanvas) and lazy["image"].shape == (64, 64, 3)
    np.testing.assert_array_equal(lazy["image"].render(), drawn["image"])
    np.testing.assert_array_equal(lazy["boxes"], drawn["boxes"])
    np.testing.assert_array_equal(lazy["labels"], drawn["labels"])
    assert lazy["masks"] is None and lazy["scale"] == drawn["scale"]
    with_masks = Mosaic(32, lazy=True, seed=seed).combine(samples)  # masks need the canvas: drawn
    assert isinstance(with_masks["image"], np.ndarray) and with_masks["masks"].shape[1:] == (64, 64)
    np.testing.assert_array_equal(with_masks["image"], drawn["image"])


# --------------------------------------------------------------------------- cached forms
def test_cached_mosaic_unchanged_until_cache_holds_more_than_four():
    ds = _dataset(10)
    t = CachedMosaic(32, max_cached_images=6, random_pop=False, seed=0)
    outs = [t(ds.load_sample(i)) for i in range(6)]
    assert all(outs[i] is ds.samples[i] for i in range(4))  # cache of 1..4 entries: untouched
    assert outs[4]["image"].shape == (64, 64, 3)           # 5 entries: mosaic
    assert ds.loads == 6                                   # no extra reads: partners come from the cache


def test_cached_mosaic_fifo_pops_oldest():
    ds = _dataset(10)
    t = CachedMosaic(32, max_cached_images=4, random_pop=False, seed=0)
    lengths = []
    for i in range(10):
        t(ds.load_sample(i))
        lengths.append(len(t.cache))
    assert lengths == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    assert t.cache.image_ids() == [7, 8, 9, 10]


def test_cached_mosaic_random_pop_keeps_current_and_is_not_fifo():
    ds = _dataset(10)
    patterns = set()
    for seed in range(6):
        t = CachedMosaic(32, max_cached_images=4, random_pop=True, seed=seed)
        for i in range(10):
            t(ds.load_sample(i))
            assert t.cache.image_ids()[-1] == i + 1 and len(t.cache) == min(i + 1, 4)
        patterns.add(tuple(t.cache.image_ids()))
    assert patterns != {(7, 8, 9, 10)}  # some older entry survived a random pop


def test_cached_mixup_unchanged_until_two_entries_and_fifo():
    ds = _dataset(6)
    t = CachedMixUp(48, max_cached_images=3, random_pop=False, seed=0)
    first = ds.load_sample(0)
    assert t(first) is first
    out = t(ds.load_sample(1))
    assert out is not ds.samples[1] and len(out["boxes"]) > len(ds.samples[1]["boxes"]) - 1
    for i in range(2, 6):
        t(ds.load_sample(i))
    assert t.cache.image_ids() == [4, 5, 6]


def test_cached_mixup_prob_zero_never_mixes():
    ds = _dataset(4)
    t = CachedMixUp(48, max_cached_images=3, prob=0.0, seed=0)
    assert all(t(ds.load_sample(i)) is ds.samples[i] for i in range(4))


def test_cache_state_round_trip_reproduces_next_output():
    ds = _dataset(10)
    t1 = CachedMosaic(32, max_cached_images=5, random_pop=True, seed=3)
    t1.attach(ds)
    for i in range(8):
        t1(ds.load_sample(i))
    state = t1.state_dict()
    assert state["image_ids"] == t1.cache.image_ids() and len(state["image_ids"]) == 5
    t2 = CachedMosaic(32, max_cached_images=5, random_pop=True, seed=99)
    t2.attach(ds)
    t2.load_state_dict(state)
    assert t2.cache.image_ids() == t1.cache.image_ids()
    a, b = t1(ds.load_sample(8)), t2(ds.load_sample(8))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])


class _RawCachedMosaic(CachedMosaic):
    """CachedMosaic caching raw samples (the mosaic fits them at every use): the reference."""

    def _fit(self, sample):
        return sample


@pytest.mark.parametrize("random_pop", [False, True])
def test_cached_mosaic_caching_fitted_tiles_changes_nothing(random_pop):
    """Keeping cache entries already resized to a tile gives the same pixels, boxes, labels and masks
    as resizing the raw entries at every mosaic (48×64 samples, 24×24 tiles)."""
    ds = _dataset(10)
    fitted = CachedMosaic(24, max_cached_images=6, random_pop=random_pop, seed=5)
    raw = _RawCachedMosaic(24, max_cached_images=6, random_pop=random_pop, seed=5)
    assert any(max(s["image"].shape[:2]) > 24 for s in ds.samples)  # some tiles are really resized
    mosaics = 0
    for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 1]:
        a, b = fitted(ds.load_sample(i)), raw(ds.load_sample(i))
        for key in ("image", "boxes", "labels", "masks"):
            np.testing.assert_array_equal(a[key], b[key])
        mosaics += a["image"].shape[:2] == (48, 48)
    assert mosaics == 8


# --------------------------------------------------------------------------- MixUp
def test_mixup_half_blend_hand_case():
    s = aug.rect_sample(32, 32, [(2, 2, 10, 10)], fill=100, image_id=1)
    p = aug.rect_sample(32, 32, [(16, 16, 30, 28)], fill=200, image_id=2)
    t = MixUp(32, ratio_range=(1.0, 1.0), flip_ratio=0.0, seed=0)
    out = t.blend(s, p)
    assert (out["image"] == 150).all()
    np.testing.assert_allclose(out["boxes"], [[2, 2, 10, 10], [16, 16, 30, 28]])
    np.testing.assert_array_equal(out["labels"], [0, 0])
    assert aug.box_mask_gap(out) == 0 and out["image_id"] == 1


def test_mixup_flip_and_beta_weight():
    s = aug.rect_sample(32, 32, [(2, 2, 10, 10)], fill=0)
    p = aug.rect_sample(32, 32, [(2, 4, 12, 20)], fill=200)
    out = MixUp(32, ratio_range=(1.0, 1.0), flip_ratio=1.0, alpha=1.5, seed=1).blend(s, p)
    np.testing.assert_allclose(out["boxes"][1], [20, 4, 30, 20])  # mirrored: 32 − 12, 32 − 2
    assert aug.box_mask_gap(out) == 0
    assert 0 < out["image"][0, 0, 0] < 200  # λ ~ Beta(1.5, 1.5), not 0.5 in general


@pytest.mark.parametrize("seed", range(4))
def test_mixup_jitter_consistent(seed):
    ds = _dataset()
    t = MixUp(48, ratio_range=(0.5, 1.5), seed=seed)
    t.attach(ds)
    out = t(ds.load_sample(0))
    aug.check_consistent(out)
    assert aug.box_mask_gap(out) <= 1.0


# --------------------------------------------------------------------------- CutMix
def _cutmix_inputs(with_masks: bool = True):
    s = aug.rect_sample(20, 20, [(2, 2, 8, 8), (12, 12, 18, 18), (8, 8, 14, 14)], fill=0, with_masks=with_masks)
    p = aug.rect_sample(20, 20, [(10, 0, 16, 6), (12, 8, 20, 16)], fill=255, with_masks=with_masks)
    p["labels"] = np.array([5, 6])
    return s, p


def test_cutmix_pair_hand_case_with_masks():
    s, p = _cutmix_inputs()
    out = cutmix_pair(s, p, (10, 10, 20, 20))
    assert (out["image"][10:, 10:] == 255).all() and (out["image"][:10] == 0).all()
    # own: A untouched, B (inside the region) erased, C cut to its visible L-shape's box
    # pasted: only the partner box overlapping the region ≥ 20 %: (12, 8, 20, 16) -> (12, 10, 20, 16)
    np.testing.assert_array_equal(out["labels"], [0, 2, 6])
    np.testing.assert_allclose(out["boxes"], [[2, 2, 8, 8], [8, 8, 14, 14], [12, 10, 20, 16]])
    assert out["masks"][1, 10:14, 10:14].sum() == 0 and out["masks"][1].sum() == 36 - 16
    assert out["masks"][2].sum() == 8 * 6
    assert aug.box_mask_gap(out) == 0


def test_cutmix_pair_hand_case_without_masks():
    s, p = _cutmix_inputs(with_masks=False)
    out = cutmix_pair(s, p, (10, 10, 20, 20))
    # C keeps 1 − 16/36 of its area visible (≥ 0.2): kept unchanged; B fully covered: dropped
    np.testing.assert_array_equal(out["labels"], [0, 2, 6])
    np.testing.assert_allclose(out["boxes"], [[2, 2, 8, 8], [8, 8, 14, 14], [12, 10, 20, 16]])
    assert out["masks"] is None


def test_cutmix_random_consistent():
    ds = _dataset()
    t = CutMix(1.0, seed=0)
    t.attach(ds)
    for i in range(4):
        out = t(ds.load_sample(i))
        aug.check_consistent(out)
        assert aug.box_mask_gap(out) == 0


# --------------------------------------------------------------------------- Copy-Paste
def _copy_paste_inputs():
    s = aug.rect_sample(20, 20, [(0, 0, 10, 10), (12, 12, 16, 16)], fill=0)
    p = aug.rect_sample(20, 20, [(5, 0, 20, 10), (0, 15, 4, 19)], fill=255)
    p["labels"] = np.array([7, 8])
    return s, p


def test_copy_paste_pair_updates_occluded_masks():
    s, p = _copy_paste_inputs()
    out = copy_paste_pair(s, p, [0], bbox_occluded_thr=2, mask_occluded_thr=40)
    assert (out["image"][:10, 5:] == 255).all() and (out["image"][:10, :5] == 0).all()
    assert (out["image"][15:19, :4] == 0).all()  # the unselected partner instance is not pasted
    np.testing.assert_array_equal(out["labels"], [0, 1, 7])
    # A lost columns 5..9: 50 pixels remain (> 40) so it stays, box shrunk to the visible part
    np.testing.assert_allclose(out["boxes"], [[0, 0, 5, 10], [12, 12, 16, 16], [5, 0, 20, 10]])
    assert out["masks"][0].sum() == 50 and out["masks"][0][:, 5:].sum() == 0
    assert aug.box_mask_gap(out) == 0


def test_copy_paste_pair_drops_mostly_occluded():
    s, p = _copy_paste_inputs()
    out = copy_paste_pair(s, p, [0], bbox_occluded_thr=2, mask_occluded_thr=60)
    np.testing.assert_array_equal(out["labels"], [1, 7])


def test_copy_paste_needs_masks_and_random_consistent():
    s, p = _copy_paste_inputs()
    s_nomask = dict(s, masks=None)
    t = CopyPaste(1.0, seed=0)
    t.attach(aug.ListDataset([p]))
    assert t(s_nomask) is s_nomask
    ds = _dataset()
    t.attach(ds)
    for i in range(4):
        out = t(ds.load_sample(i))
        aug.check_consistent(out)
        assert aug.box_mask_gap(out) == 0
