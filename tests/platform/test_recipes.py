"""Recipes: paper defaults per model size, overrides, stage switch, end-to-end pipelines."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from detflow.config.train import (
    EMAConfig, MixUpConfig, MosaicConfig, OptimizerConfig, RecipeConfig, ScheduleConfig,
)
from detflow.data.geometric import HSVRandomAug, RandomAffine, RandomResizeCrop, YOLOXHSVRandomAug
from detflow.data.mixing import CachedMixUp, CachedMosaic, CopyPaste, CutMix, MixUp, Mosaic
from detflow.data.augment_recipes import augment_recipe, build_pipeline, scaled_last_epochs
from detflow.engine.recipes import build_recipe as _build_recipe
from detflow.data.transforms import LetterboxResize, RandomFlip
from detflow.errors import ConfigError

_spec = importlib.util.spec_from_file_location("conftest_augment", Path(__file__).with_name("conftest_augment.py"))
aug = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aug)


def build_recipe(cfg, *, model_name, **kw):
    """The recipe at ``model_name``'s registered size."""
    import detmodels

    return _build_recipe(cfg, size=detmodels.get_model_entry(model_name).size, **kw)


def _types(pipeline) -> list[type]:
    return [type(t) for t in pipeline.transforms]


def _find(pipeline, kind):
    return next(t for t in pipeline.transforms if isinstance(t, kind))


@pytest.mark.parametrize(("epochs", "last", "expected"), [(300, 20, 20), (30, 20, 2), (10, 20, 1), (2, 20, 1),
                                                          (1, 20, 0), (300, 15, 15), (100, 15, 5)])
def test_scaled_last_epochs(epochs, last, expected):
    assert scaled_last_epochs(epochs, last) == expected


def test_rtmdet_switch_epoch_and_stage_pipelines():
    r = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_s", image_size=64, epochs=300)
    assert r.switch_epoch == 280 and r.describe()["recipe.switch_epoch"] == 280
    short = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_s", image_size=64, epochs=30)
    assert short.switch_epoch == 28
    aug = short.augmentation
    s1, s2 = aug.train_transforms(0), aug.train_transforms(28)
    assert aug.train_transforms(27) is s1 and aug.train_transforms(29) is s2  # caches persist
    assert _types(s1)[0] is CachedMosaic and CachedMixUp in _types(s1)
    assert CachedMosaic not in _types(s2) and CachedMixUp not in _types(s2)
    assert RandomResizeCrop in _types(s2) and YOLOXHSVRandomAug in _types(s2) and RandomFlip in _types(s2)
    assert _find(s1, RandomResizeCrop).resize.scale == (128, 128)  # LSJ on the 2S mosaic canvas
    assert _find(s2, RandomResizeCrop).resize.scale == (64, 64)


def test_rtmdet_size_defaults_tiny_vs_large():
    tiny = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_tiny", image_size=64, epochs=10)
    p = tiny.augmentation.train_transforms(0)
    mosaic, mixup = _find(p, CachedMosaic), _find(p, CachedMixUp)
    assert (mosaic.cache.max_size, mosaic.cache.random_pop) == (20, False)
    assert (mixup.cache.max_size, mixup.cache.random_pop, mixup.prob) == (10, False, 0.5)
    assert tiny.augmentation.spec.ratio_range == (0.5, 2.0)
    large = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_ins_l", image_size=64, epochs=10)
    p = large.augmentation.train_transforms(0)
    assert (_find(p, CachedMosaic).cache.max_size, _find(p, CachedMosaic).cache.random_pop) == (40, True)
    assert (_find(p, CachedMixUp).cache.max_size, _find(p, CachedMixUp).prob) == (20, 1.0)
    assert large.augmentation.spec.ratio_range == (0.1, 2.0)
    assert large.optimizer.name == "adamw" and large.optimizer.lr == 0.004 and large.ema.kind == "exp_momentum"


def test_overrides_are_honoured():
    cfg = RecipeConfig(name="rtmdet", mosaic=MosaicConfig(max_cached_images=7, random_pop=False),
                       mixup=MixUpConfig(cache=False, prob=0.3), ratio_range=(0.8, 1.2), hsv=False,
                       flip_prob=0.0, cutmix_prob=0.25, copy_paste_prob=0.5, strong_aug_off_epochs=5)
    r = build_recipe(cfg, model_name="rtmdet_tiny", image_size=64, epochs=30)
    p = r.augmentation.train_transforms(0)
    mosaic = _find(p, CachedMosaic)
    assert (mosaic.cache.max_size, mosaic.cache.random_pop, mosaic.prob) == (7, False, 1.0)
    mixup = _find(p, MixUp)
    assert type(mixup) is MixUp and mixup.prob == 0.3
    assert _find(p, RandomResizeCrop).resize.ratio_range == (0.8, 1.2)
    types = _types(p)
    assert YOLOXHSVRandomAug not in types and RandomFlip not in types
    assert _find(p, CutMix).prob == 0.25 and _find(p, CopyPaste).prob == 0.5
    assert r.switch_epoch == 25
    stage2 = _types(r.augmentation.train_transforms(25))
    assert CutMix not in stage2 and CopyPaste not in stage2


def test_disabled_mosaic_uses_single_canvas():
    cfg = RecipeConfig(name="rtmdet", mosaic=MosaicConfig(enabled=False))
    p = build_recipe(cfg, model_name="rtmdet_s", image_size=64, epochs=10).augmentation.train_transforms(0)
    assert CachedMosaic not in _types(p) and _find(p, RandomResizeCrop).resize.scale == (64, 64)


def test_yolov6_sizes_and_last_15():
    n = build_recipe(RecipeConfig(name="yolov6"), model_name="yolov6_n", image_size=64, epochs=300)
    m = build_recipe(RecipeConfig(name="yolov6"), model_name="yolov6_m", image_size=64, epochs=300)
    assert n.switch_epoch == 285
    pn, pm = n.augmentation.train_transforms(0), m.augmentation.train_transforms(0)
    assert _types(pn)[0] is Mosaic and MixUp not in _types(pn)
    assert _find(pm, MixUp).prob == 0.1 and _find(pm, MixUp).alpha == 32.0
    assert _find(pn, RandomAffine).scale == 0.5 and _find(pm, RandomAffine).scale == 0.9
    assert HSVRandomAug in _types(pn)
    late = n.augmentation.train_transforms(290)
    assert _types(late)[:2] == [LetterboxResize, RandomAffine] and Mosaic not in _types(late)
    assert (n.optimizer.name, n.optimizer.lr, n.optimizer.nesterov, m.optimizer.lr) == ("sgd", 0.02, True, 0.01)
    assert n.ema.kind == "ramped" and n.schedule.name == "cosine"


def test_retinanet_flip_and_scale_jitter_no_switch():
    r = build_recipe(RecipeConfig(name="retinanet"), model_name="spinenet_49s", image_size=64, epochs=12)
    assert r.switch_epoch == 12 and len(r.augmentation.stages) == 1
    p = r.augmentation.train_transforms(0)
    jitter = _find(p, RandomResizeCrop)
    assert jitter.resize.ratio_range == (0.5, 2.0) and jitter.crop.size == (64, 64)
    types = _types(p)
    assert RandomFlip in types and YOLOXHSVRandomAug not in types and Mosaic not in types
    assert not any(issubclass(t, (Mosaic, MixUp)) for t in types)
    assert r.schedule.name == "step" and r.optimizer.momentum == 0.9 and not r.ema.enabled


def test_yolov3_asff_mixup_multiscale_and_two_switches():
    r = build_recipe(RecipeConfig(name="yolov3_asff"), model_name="yolov3_asff", image_size=608, epochs=300)
    assert [(s.start, s.strong, s.multiscale) for s in r.augmentation.stages] == [
        (0, True, True), (270, False, True), (290, False, False)]
    assert r.switch_epoch == 270
    p = r.augmentation.train_transforms(0)
    assert _find(p, MixUp).alpha == 1.5
    sizes = p.transforms[0].sizes
    assert sizes[0] == 320 and sizes[-1] == 608 and all(b - a == 32 for a, b in zip(sizes, sizes[1:]))
    assert type(r.augmentation.train_transforms(295).transforms[0]) is LetterboxResize


@pytest.mark.parametrize(("model", "recipe", "message"), [
    ("rtmdet_s", {"name": "rtmdet", "multiscale": [320, 640]},
     "x.yaml: recipe.multiscale: expected null: only recipes yolov3_asff and plain use multi-scale sizes, not 'rtmdet'"),
    ("yolov6_s", {"multiscale": [320, 640]},
     "x.yaml: recipe.multiscale: expected null: only recipes yolov3_asff and plain use multi-scale sizes, "
     "not 'yolov6' (model yolov6_s's recipe), got [320, 640]"),
    ("rtmdet_s", {"ratio_range": [2.0, 1.0]}, "x.yaml: recipe.ratio_range: expected 0 < low <= high, got [2.0, 1.0]"),
    ("yolov3_asff", {"multiscale": [16, 640]}, "x.yaml: recipe.multiscale: expected 32 <= min <= max, got [16, 640]"),
])
def test_bad_overrides_are_refused_when_the_config_validates(model, recipe, message):
    """One rule per value, checked by the config (``detflow config validate``, before Ray starts)."""
    from detflow.config import TrainConfig, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(TrainConfig, {"model": {"name": model}, "data": {"train": {"annotations": "a", "images": "b"}},
                                   "recipe": recipe}, "x.yaml")
    assert message in str(err.value)
    ok = parse_config(TrainConfig, {"model": {"name": "yolov3_asff"}, "data": {"train": {"annotations": "a",
                                    "images": "b"}}, "recipe": {"multiscale": [256, 320]}})
    assert ok.recipe.name == "yolov3_asff" and ok.recipe.multiscale == (256, 320)  # its recipe uses them


def test_optimizer_and_ema_merging():
    r = build_recipe(RecipeConfig(name="retinanet"), model_name="spinenet_49s", image_size=64, epochs=12)
    merged = r.optimizer.merged(OptimizerConfig(lr=0.1))
    assert merged.lr == 0.1 and merged.weight_decay == r.optimizer.weight_decay
    assert r.ema.merged(EMAConfig()).enabled is False          # default EMAConfig leaves the recipe's choice
    assert r.ema.merged(EMAConfig(enabled=True)).enabled is True


@pytest.mark.parametrize(("config", "spec"), [(OptimizerConfig, "OptimizerSpec"), (ScheduleConfig, "ScheduleSpec"),
                                              (EMAConfig, "EMASpec")])
def test_every_override_field_is_a_spec_field(config, spec):
    """``train.optimizer/schedule/ema`` override the typed specs field by field, none dropped."""
    import dataclasses

    from detflow.engine import specs

    assert set(config.model_fields) <= {f.name for f in dataclasses.fields(getattr(specs, spec))}


@pytest.mark.parametrize("name", ["rtmdet", "rtmdet_ins", "yolov6", "retinanet", "yolov3_asff", "plain"])
def test_recipe_pipelines_end_to_end(name):
    from detmodels import InputSpec

    ds = aug.ListDataset([aug.random_sample(i + 1) for i in range(8)])
    r = _build_recipe(RecipeConfig(name=name, cutmix_prob=0.5, copy_paste_prob=0.5,
                                   mosaic=MosaicConfig(max_cached_images=4), mixup=MixUpConfig(max_cached_images=3)),
                      size="s", image_size=64, epochs=4, input_spec=InputSpec(), with_masks=True)
    for epoch in (0, 3):
        p = r.augmentation.train_transforms(epoch, dataset=ds)
        for i in range(8):
            image, target, meta = p(ds.load_sample(i))
            h, w = image.shape[1:]
            assert image.shape[0] == 3 and h <= 64 and w <= 64
            b = target["boxes"].numpy()
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert target["masks"].shape == (len(b), h, w)


@pytest.mark.parametrize("name,with_masks,lazy", [
    ("rtmdet", False, True), ("rtmdet_ins", True, False), ("yolov6", False, False),
])
def test_mosaic_is_left_undrawn_only_for_the_lsj_crop_without_masks(name, with_masks, lazy):
    steps = build_pipeline(augment_recipe(name, "s").augment, image_size=64, strong=True, multiscale=True,
                           with_masks=with_masks)
    assert isinstance(steps[0], Mosaic) and steps[0].lazy is lazy
    assert not lazy or isinstance(steps[1], RandomResizeCrop)  # the crop renders the undrawn mosaic


def test_recipe_state_dict_round_trip():
    ds = aug.ListDataset([aug.random_sample(i + 1) for i in range(8)])
    r1 = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_tiny", image_size=32, epochs=10)
    p = r1.augmentation.train_transforms(0, dataset=ds)
    for i in range(8):
        p(ds.load_sample(i))
    state = r1.augmentation.state_dict()
    r2 = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_tiny", image_size=32, epochs=10)
    r2.augmentation.load_state_dict(state, dataset=ds)
    assert _find(r2.augmentation.train_transforms(0), CachedMosaic).cache.image_ids() == list(range(1, 9))
    assert len(_find(r2.augmentation.train_transforms(0), CachedMixUp).cache) == len(_find(p, CachedMixUp).cache)
    np.testing.assert_array_equal(state["stage1"][0]["image_ids"], list(range(1, 9)))


def test_yolov6_unmosaicked_samples_are_letterboxed_first():
    big = [aug.random_sample(i + 1, h=96, w=128, n=3) for i in range(6)]
    ds = aug.ListDataset(big)
    r = build_recipe(RecipeConfig(name="yolov6", mosaic=MosaicConfig(prob=0.5)), model_name="yolov6_s",
                     image_size=32, epochs=10, seed=1)
    p = r.augmentation.train_transforms(0, dataset=ds)
    assert isinstance(_find(p, Mosaic).fallback, LetterboxResize)
    for i in range(6):
        out = p(ds.load_sample(i))
        assert out["image"].shape == (32, 32, 3)
        aug.check_consistent(out)
        assert aug.box_mask_gap(out) <= 1.5  # letterbox/mosaic resize then affine: two nearest samplings


def test_data_bench_reports_three_pipelines():
    from detflow.bench.data_bench import run_data_bench

    ds = aug.ListDataset([aug.random_sample(i + 1) for i in range(6)])
    lines: list[str] = []
    r = run_data_bench("rtmdet", images=3, image_size=32, dataset=ds, print_fn=lines.append)
    assert set(r["images_per_s"]) == {"cached", "uncached", "ceiling"} and r["model_name"] == "rtmdet_s"
    assert all(v > 0 for v in r["images_per_cpu_s"].values())
    assert r["speedup_cached_vs_uncached"] == pytest.approx(r["images_per_s"]["cached"] / r["images_per_s"]["uncached"])
    assert "cached / uncached" in lines[0]


def test_data_bench_source_size_sets_the_synthetic_images(tmp_path):
    """``--source-size``: the synthetic JPEGs are decoded at that size (the ceiling's cost), while
    the pipelines still output ``image_size``."""
    from detflow.bench.data_bench import _dataset, run_data_bench

    ds = _dataset(None, 96, 8, tmp_path)
    assert ds.load_sample(0)["image"].shape == (96, 96, 3)
    lines: list[str] = []
    r = run_data_bench("rtmdet", images=2, image_size=32, source_size=64, print_fn=lines.append)
    assert r["source_size"] == 64 and "synthetic 64×64 JPEGs" in lines[0]


def test_bench_data_source_size_with_annotations_is_exit_2(tmp_path, capsys):
    from detflow.cli import main

    ann = tmp_path / "a.json"
    ann.write_text("{}")
    assert main(["bench", "data", "--annotations", str(ann), "--source-size", "640"]) == 2
    assert "--source-size 640" in capsys.readouterr().err
