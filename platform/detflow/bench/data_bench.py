"""``detflow bench data``: images/s of a recipe's stage-1 training pipeline.

Three pipelines run over the same images in the same order, each after the same warm-up:

* ``cached``   — the recipe's stage 1 with CachedMosaic + CachedMixUp (RTMDet §3.3);
* ``uncached`` — the same pipeline with plain Mosaic + MixUp (3 + 1 extra image reads per sample);
* ``ceiling``  — decode + letterbox resize + pack only (no augmentation at all).

Example::

    from detflow.bench.data_bench import run_data_bench
    figures = run_data_bench("rtmdet", images=200, image_size=320)
    print(figures["speedup_cached_vs_uncached"])
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config.train import MixUpConfig, MosaicConfig, RecipeConfig
from ..errors import UserInputError

__all__ = ["run_data_bench", "format_data_bench"]


def _dataset(dataset: Any, image_size: int, images: int, workdir: Path) -> Any:
    """``dataset`` as given (a CocoDataset, or ``(annotations, images_dir)``), else a synthetic one."""
    from ..data.coco import CocoDataset

    if dataset is None:
        from ..data.synth import generate_synthetic

        paths = generate_synthetic(workdir / "synth", num_images=max(32, min(images, 200)), seed=0,
                                   image_size=image_size, val_fraction=0.0)
        return CocoDataset(paths.train_json, paths.images_dir, filter_empty=True)
    if isinstance(dataset, (tuple, list)):
        annotations, images_dir = dataset
        return CocoDataset(annotations, images_dir, filter_empty=True)
    return dataset


def _time_pipeline(load: Callable[[int], Any], pipeline: Callable[[Any], Any], order: list[int],
                   warmup: int) -> float:
    """Images/s of ``pipeline(load(i))`` over ``order`` after ``warmup`` untimed calls."""
    for i in order[:warmup]:
        pipeline(load(i))
    start = time.perf_counter()
    for i in order[warmup:]:
        pipeline(load(i))
    return (len(order) - warmup) / (time.perf_counter() - start)


def run_data_bench(recipe: str = "rtmdet", images: int = 200, image_size: int = 320, dataset: Any = None, *,
                   model_name: str = "rtmdet_s", seed: int = 0, print_fn: Callable[[str], None] | None = print
                   ) -> dict[str, Any]:
    """Measure the stage-1 pipeline of ``recipe`` with cached vs uncached Mosaic/MixUp vs the ceiling.

    Args:
        recipe: a recipe name (``rtmdet`` …); its mosaic and mixup are switched on if the recipe
            leaves them off, so the comparison always exercises both.
        images: timed samples per pipeline (after a warm-up that fills the caches).
        image_size: training input size S (mosaic canvas 2S).
        dataset: a ``CocoDataset``, an ``(annotations, images_dir)`` pair, or ``None`` for a
            synthetic dataset written to a temporary directory.
        model_name: picks the recipe's size-dependent defaults (``rtmdet_s``: caches 40 / 20, random pop).

    Returns:
        ``{"recipe", "model_name", "image_size", "images", "images_per_s": {"cached", "uncached",
        "ceiling"}, "speedup_cached_vs_uncached", "cached_fraction_of_ceiling", "dataset_images"}``.
    """
    if images < 1:
        raise UserInputError(f"bench data --images: expected a positive number, got {images}")
    from detmodels import InputSpec

    from ..data.recipes import RECIPE_NAMES, build_recipe
    from ..data.transforms import Compose, LetterboxResize, PackDetInputs

    if recipe not in RECIPE_NAMES:
        raise UserInputError(f"bench data --recipe: expected one of {', '.join(RECIPE_NAMES)}, got {recipe!r}")
    with tempfile.TemporaryDirectory(prefix="detflow-bench-data-") as tmp:
        ds = _dataset(dataset, image_size, images, Path(tmp))
        spec = InputSpec()
        pipelines = {}
        for name, cache in (("cached", True), ("uncached", False)):
            cfg = RecipeConfig(name=recipe, mosaic=MosaicConfig(enabled=True, cache=cache),
                               mixup=MixUpConfig(enabled=True, cache=cache))
            r = build_recipe(cfg, model_name=model_name, image_size=image_size, epochs=300, input_spec=spec,
                             seed=seed)
            pipelines[name] = r.train_transforms(0, dataset=ds)
        pipelines["ceiling"] = Compose([LetterboxResize(image_size), PackDetInputs(spec)])
        warmup = 2 * max(MosaicConfig().max_cached_images, MixUpConfig().max_cached_images)
        order = np.random.default_rng(seed).integers(len(ds), size=warmup + images).tolist()
        rates = {name: _time_pipeline(ds.load_sample, p, order, warmup) for name, p in pipelines.items()}
    result = {
        "recipe": recipe, "model_name": model_name, "image_size": image_size, "images": images,
        "dataset_images": len(ds), "images_per_s": rates,
        "speedup_cached_vs_uncached": rates["cached"] / rates["uncached"],
        "cached_fraction_of_ceiling": rates["cached"] / rates["ceiling"],
    }
    if print_fn is not None:
        print_fn(format_data_bench(result))
    return result


def format_data_bench(result: dict[str, Any]) -> str:
    """A small text table of :func:`run_data_bench`'s figures."""
    r = result["images_per_s"]
    lines = [
        f"data pipeline, recipe {result['recipe']} ({result['model_name']}), {result['image_size']} px, "
        f"{result['images']} images timed (dataset of {result['dataset_images']})",
        f"  stage 1, CachedMosaic + CachedMixUp : {r['cached']:8.1f} images/s",
        f"  stage 1, Mosaic + MixUp (uncached)  : {r['uncached']:8.1f} images/s",
        f"  decode + resize only (ceiling)      : {r['ceiling']:8.1f} images/s",
        f"  cached / uncached = {result['speedup_cached_vs_uncached']:.2f}x; "
        f"cached = {100 * result['cached_fraction_of_ceiling']:.0f}% of the ceiling",
    ]
    return "\n".join(lines)
