"""The detflow side of ``detflow bench … --against mmdet``: run as its own process, one JSON line out.

``python -m detflow.bench.detflow_side SUBCOMMAND …`` with the same subcommands and protocols as
``scripts/bench/mmdet_side.py`` (the mmdetection 3.3 side, in its own venv):

* ``data --ann A --images-dir D --image-size 320 --images 200``: :func:`detflow.bench.data_bench.run_data_bench`
  with the rtmdet recipe at the RTMDet-tiny size (CachedMosaic 20 / CachedMixUp 10, FIFO, as the
  mmdet config) — cached, uncached and the decode + resize + pad + pack ceiling;
* ``step --tensors T.npz --steps 20 --warmup 3``: one ``TrainLoop.train_step`` of detmodels
  ``rtmdet_tiny`` (80 classes): forward + loss (DynamicSoftLabelAssigner, QFL, GIoU), zero_grad,
  backward, SGD step; median ms;
* ``infer --model rtmdet_tiny|rtmdet_s --tensors T.npz --runs 10``: eval forward to raw head outputs.

:func:`write_tensors` writes the ``.npz`` both sides read, so that both time the same tensors.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["write_tensors", "median_ms", "run_step", "run_infer", "run_data", "main"]

NUM_CLASSES = 80
SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def write_tensors(path: str | Path, *, batch: int, image_size: int, boxes_per_image: int = 5, seed: int = 0) -> Path:
    """A deterministic batch: ``images`` N×3×S×S float32 (standard normal, i.e. already normalised),
    per image ``boxes_<i>`` M×4 xyxy in input pixels (sides S/20 … S/2) and ``labels_<i>`` M int64 in
    [0, 80); ``lr`` and ``weight_decay`` of the SGD both sides build."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {"images": rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32),
                              "lr": np.float64(SGD["lr"]), "weight_decay": np.float64(SGD["weight_decay"])}
    for i in range(batch):
        wh = rng.uniform(image_size / 20, image_size / 2, size=(boxes_per_image, 2))
        x0y0 = rng.uniform(0, 1, size=(boxes_per_image, 2)) * (image_size - wh)
        arrays[f"boxes_{i}"] = np.concatenate([x0y0, x0y0 + wh], axis=1).astype(np.float32)
        arrays[f"labels_{i}"] = rng.integers(0, NUM_CLASSES, size=boxes_per_image).astype(np.int64)
    path = Path(path)
    np.savez(path, **arrays)
    return path


def median_ms(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """``{"median_ms", "min_ms", "cpu_ms_per_run"}`` of ``fn`` over ``runs`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times, cpu = [], time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "cpu_ms_per_run": 1000.0 * (time.process_time() - cpu) / runs}


def _model(name: str):
    import torch
    from detmodels import create_model

    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES)


def run_step(tensors: str | Path, *, steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Median ms of one RTMDet-tiny training step through :class:`detflow.engine.loop.TrainLoop`
    (constant LR, no EMA, fp32) on the batch of ``tensors``."""
    import torch

    from ..engine.loop import TrainLoop
    from ..engine.schedules import IterLRScheduler, LRSchedule

    data = np.load(tensors)
    images = torch.from_numpy(data["images"])
    targets = [{"boxes": torch.from_numpy(data[f"boxes_{i}"]), "labels": torch.from_numpy(data[f"labels_{i}"])}
               for i in range(images.shape[0])]
    model = _model("rtmdet_tiny").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=float(data["lr"]), momentum=SGD["momentum"],
                                weight_decay=float(data["weight_decay"]))
    loop = TrainLoop(model, optimizer, IterLRScheduler(optimizer, LRSchedule("constant", total_iters=1)))
    figures = median_ms(lambda: loop.train_step(images, targets, 0), warmup, steps)
    return {"side": "detflow", "bench": "step", "batch": images.shape[0], "image_size": images.shape[-1], **figures}


def run_infer(model_name: str, tensors: str | Path, *, runs: int = 10) -> dict[str, Any]:
    """Median ms of an eval-mode forward to raw head outputs (no post-processing), batch 1."""
    import torch

    images = torch.from_numpy(np.load(tensors)["images"][:1])
    model = _model(model_name).eval()

    @torch.no_grad()
    def forward() -> None:
        model(images)
    return {"side": "detflow", "bench": "infer", "model": model_name, "image_size": images.shape[-1],
            **median_ms(forward, 2, runs)}


def run_data(ann: str | Path, images_dir: str | Path, *, image_size: int = 320, images: int = 200,
             seed: int = 0) -> dict[str, Any]:
    """``run_data_bench`` of the rtmdet recipe at the tiny size (the mmdet RTMDet-tiny config's caches)."""
    from .data_bench import run_data_bench

    result = run_data_bench("rtmdet", images, image_size, (Path(ann), Path(images_dir)), model_name="rtmdet_tiny",
                            seed=seed, print_fn=None)
    return {"side": "detflow", "bench": "data", **result}


def data_warmup() -> int:
    """The warm-up samples ``run_data_bench`` uses (twice the larger default cache): the mmdet side uses as many."""
    from ..config.train import MixUpConfig, MosaicConfig

    return 2 * max(MosaicConfig().max_cached_images, MixUpConfig().max_cached_images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detflow.bench.detflow_side", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    data = sub.add_parser("data")
    data.add_argument("--ann", required=True)
    data.add_argument("--images-dir", required=True)
    data.add_argument("--image-size", type=int, default=320)
    data.add_argument("--images", type=int, default=200)
    data.add_argument("--seed", type=int, default=0)
    step = sub.add_parser("step")
    step.add_argument("--tensors", required=True)
    step.add_argument("--steps", type=int, default=20)
    step.add_argument("--warmup", type=int, default=3)
    infer = sub.add_parser("infer")
    infer.add_argument("--model", default="rtmdet_tiny")
    infer.add_argument("--tensors", required=True)
    infer.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.cmd == "data":
        result = run_data(args.ann, args.images_dir, image_size=args.image_size, images=args.images, seed=args.seed)
    elif args.cmd == "step":
        result = run_step(args.tensors, steps=args.steps, warmup=args.warmup)
    else:
        result = run_infer(args.model, args.tensors, runs=args.runs)
    result["torch"] = torch.__version__
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
