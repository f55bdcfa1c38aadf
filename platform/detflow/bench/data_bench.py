"""``detflow bench data``: images/s of a recipe's stage-1 training pipeline.

Three pipelines run over the same images in the same order, each after the same warm-up:

* ``cached``   — the recipe's stage 1 with CachedMosaic + CachedMixUp (RTMDet §3.3);
* ``uncached`` — the same pipeline with plain Mosaic + MixUp (3 + 1 extra image reads per sample);
* ``ceiling``  — decode + letterbox resize + pack only (no augmentation at all).

Every pipeline packs as training does: uint8 images, normalised later on the training device
(MMDetection's PackDetInputs leaves the pixels uint8 too; its data preprocessor normalises).

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
import torch

from ..config.train import RECIPE_NAMES, MixUpConfig, MosaicConfig, RecipeConfig
from ..errors import UserInputError

__all__ = ["run_data_bench", "format_data_bench"]

_DEFAULT_MODEL = {"rtmdet": "rtmdet_s", "rtmdet_ins": "rtmdet_ins_s", "yolov6": "yolov6_s",
                  "retinanet": "spinenet_49s", "yolov3_asff": "yolov3_asff", "plain": "rtmdet_s"}


def _dataset(dataset: Any, source_size: int, images: int, workdir: Path) -> Any:
    """``dataset`` as given (a CocoDataset, or ``(annotations, images_dir)``), else a synthetic one of
    ``source_size``-px square images."""
    from ..data.coco import CocoDataset

    if dataset is None:
        from ..data.synth import generate_synthetic

        paths = generate_synthetic(workdir / "synth", num_images=max(32, min(images, 200)), seed=0,
                                   image_size=source_size, val_fraction=0.0)
        return CocoDataset(paths.train_json, paths.images_dir, filter_empty=True)
    if isinstance(dataset, (tuple, list)):
        annotations, images_dir = dataset
        return CocoDataset(annotations, images_dir, filter_empty=True)
    return dataset


def _time_pipeline(load: Callable[[int], Any], pipeline: Callable[[Any], Any], order: list[int],
                   warmup: int) -> tuple[float, float]:
    """``(images per wall second, images per CPU second)`` of ``pipeline(load(i))`` over ``order``
    after ``warmup`` untimed calls (CPU time is the steadier figure on a shared machine)."""
    for i in order[:warmup]:
        pipeline(load(i))
    wall, cpu = time.perf_counter(), time.process_time()
    for i in order[warmup:]:
        pipeline(load(i))
    n = len(order) - warmup
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def _pipelines(recipe: str, model_name: str, image_size: int, ds: Any, seed: int) -> dict[str, Any]:
    """The cached / uncached stage-1 pipelines of ``recipe`` and the decode+resize ceiling."""
    from detmodels import InputSpec, get_model_entry

    from ..data.augment_recipes import build_augmentation
    from ..data.transforms import Compose, LetterboxResize, PackDetInputs

    spec = InputSpec()
    pipelines = {}
    for name, cache in (("cached", True), ("uncached", False)):
        cfg = RecipeConfig(name=recipe, mosaic=MosaicConfig(enabled=True, cache=cache),
                           mixup=MixUpConfig(enabled=True, cache=cache))
        aug = build_augmentation(cfg, size=get_model_entry(model_name).size, image_size=image_size, epochs=300,
                                 input_spec=spec, seed=seed)
        pipelines[name] = aug.train_transforms(0, dataset=ds)
    pipelines["ceiling"] = Compose([LetterboxResize(image_size), PackDetInputs(spec, normalize=False)])
    return pipelines


def run_data_bench(recipe: str = "rtmdet", images: int = 200, image_size: int = 320, dataset: Any = None, *,
                   model_name: str | None = None, seed: int = 0, source_size: int | None = None,
                   print_fn: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Measure the stage-1 pipeline of ``recipe`` with cached vs uncached Mosaic/MixUp vs the ceiling.

    Args:
        recipe: a recipe name (``rtmdet`` …); its mosaic and mixup are switched on if the recipe
            leaves them off, so the comparison always exercises both.
        images: timed samples per pipeline (after a warm-up that fills the caches).
        image_size: training input size S (mosaic canvas 2S).
        dataset: a ``CocoDataset``, an ``(annotations, images_dir)`` pair, or ``None`` for a
            synthetic dataset written to a temporary directory.
        source_size: side of the synthetic source images (default ``image_size``). The ceiling is
            mostly JPEG decoding, whose cost grows with the source's pixels while the augmentation
            works at ``image_size``: COCO-sized sources (640) decode ~3.5× slower than 320-px ones.
        model_name: picks the recipe's size-dependent defaults; default the recipe's "s" model
            (``rtmdet_s``: caches 40 / 20, random pop).

    Returns:
        ``{"recipe", "model_name", "image_size", "images", "dataset_images",
        "images_per_s": {"cached", "uncached", "ceiling"}, "images_per_cpu_s": {same keys},
        "speedup_cached_vs_uncached", "speedup_cached_vs_uncached_cpu", "cached_fraction_of_ceiling"}``.
    """
    if images < 1:
        raise UserInputError(f"bench data --images: expected a positive number, got {images}")
    if source_size is not None and source_size < 32:
        raise UserInputError(f"bench data --source-size: expected at least 32 px, got {source_size}")
    if recipe not in RECIPE_NAMES:
        raise UserInputError(f"bench data --recipe: expected one of {', '.join(RECIPE_NAMES)}, got {recipe!r}")
    model_name = model_name or _DEFAULT_MODEL[recipe]
    with tempfile.TemporaryDirectory(prefix="detflow-bench-data-") as tmp:
        ds = _dataset(dataset, source_size or image_size, images, Path(tmp))
        pipelines = _pipelines(recipe, model_name, image_size, ds, seed)
        warmup = 2 * max(MosaicConfig().max_cached_images, MixUpConfig().max_cached_images)
        order = np.random.default_rng(seed).integers(len(ds), size=warmup + images).tolist()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        try:
            timed = {name: _time_pipeline(ds.load_sample, p, order, warmup) for name, p in pipelines.items()}
        finally:
            torch.set_num_threads(threads)
    rates = {name: wall for name, (wall, _) in timed.items()}
    cpu_rates = {name: cpu for name, (_, cpu) in timed.items()}
    result = {
        "recipe": recipe, "model_name": model_name, "image_size": image_size, "images": images,
        "source_size": None if dataset is not None else source_size or image_size,
        "dataset_images": len(ds), "images_per_s": rates, "images_per_cpu_s": cpu_rates,
        "speedup_cached_vs_uncached": rates["cached"] / rates["uncached"],
        "speedup_cached_vs_uncached_cpu": cpu_rates["cached"] / cpu_rates["uncached"],
        "cached_fraction_of_ceiling": rates["cached"] / rates["ceiling"],
    }
    if print_fn is not None:
        print_fn(format_data_bench(result))
    return result


def _source(result: dict[str, Any]) -> str:
    size = result.get("source_size")
    return f" synthetic {size}×{size} JPEGs" if size else ""


def format_data_bench(result: dict[str, Any]) -> str:
    """A small text table of :func:`run_data_bench`'s figures."""
    r, c = result["images_per_s"], result["images_per_cpu_s"]
    lines = [
        f"data pipeline, recipe {result['recipe']} ({result['model_name']}), {result['image_size']} px, "
        f"{result['images']} images timed (dataset of {result['dataset_images']}{_source(result)}), 1 torch thread",
        f"  {'':38s}{'images/s':>10s}{'images/CPU-s':>14s}",
        f"  {'stage 1, CachedMosaic + CachedMixUp':38s}{r['cached']:10.1f}{c['cached']:14.1f}",
        f"  {'stage 1, Mosaic + MixUp (uncached)':38s}{r['uncached']:10.1f}{c['uncached']:14.1f}",
        f"  {'decode + resize only (ceiling)':38s}{r['ceiling']:10.1f}{c['ceiling']:14.1f}",
        f"  cached / uncached = {result['speedup_cached_vs_uncached']:.2f}x wall, "
        f"{result['speedup_cached_vs_uncached_cpu']:.2f}x CPU; "
        f"cached = {100 * result['cached_fraction_of_ceiling']:.0f}% of the ceiling",
    ]
    return "\n".join(lines)
