"""Shared parts of the learning tests (``tests/platform/test_learn_*.py``): the synthetic data section
and one timed training run."""
from __future__ import annotations

import time


def synth_data(synth, image_size: int) -> dict:
    """The ``data:`` section of a TrainConfig on a ``generate_synthetic`` set (train and val splits)."""
    return {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
            "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)},
            "image_size": image_size}


def timed_training(config) -> tuple[object, list[float], float]:
    """``run_training(config)`` without progress bars: (result, train loss per epoch, wall seconds)."""
    from detflow.train import run_training

    start = time.monotonic()
    result = run_training(config, progress=False)
    return result, [h["train/loss"] for h in result.history], time.monotonic() - start
