"""YOLOv6-N learns from detflow's own initialisation (issue 25): a short real training on the synthetic
shapes set through Ray Train (1 CPU worker), asserting a bbox mAP50 floor measured with pycocotools on the
val split (the training result's val metrics).

The run: 48 images of 96 px (40 train / 8 val), 2 classes, batch 4, 15 epochs, the yolov6 recipe's Nesterov
SGD (momentum 0.937, wd 5e-4, cosine) at YOLOv6-N's base lr 0.02 unscaled, 20 warm-up iterations (the recipe's
0.02 per 256 images and 1000-iteration warm-up cannot move in ~100 steps), mosaic off (at 96 px a 2×2
mosaic leaves 2–10 px objects), the recipe's affine/HSV/flip kept. Environment overrides for measuring:
``DETFLOW_LEARN_EPOCHS``, ``DETFLOW_LEARN_LR``.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from learning import synth_data, timed_training  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE_SIZE = 96
EPOCHS = int(os.environ.get("DETFLOW_LEARN_EPOCHS", "15"))
LR = float(os.environ.get("DETFLOW_LEARN_LR", "0.02"))

# Measured bbox mAP50 after EPOCHS epochs (see the module docstring for the run); the floor leaves a
# margin for run-to-run variation (CPU kernels, Ray scheduling, thread counts).
# Runs on the shared, heavily loaded 2-core machine (load average 30–80):
#   15 epochs, lr 0.02: mAP50 0.218, 218 s training wall; train loss 3.21 → 1.98 (this configuration)
#   10 epochs, lr 0.01: mAP50 0.189, 294 s; train loss 3.23 → 2.03
#   15 epochs, lr 0.04: mAP50 0.165, 196 s; train loss 3.14 → 1.83 (8 val images: mAP50 is noisy)
MEASURED_MAP50 = 0.218
MAP50_FLOOR = 0.12


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=48, image_size=IMAGE_SIZE, seed=0,
                              num_classes=2, val_fraction=1 / 6)


def learn_config(synth, storage, *, epochs: int = EPOCHS, lr: float = LR):
    """The TrainConfig of the learning run (also used to measure the floor by hand)."""
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {
        "name": "learn-yolov6", "model": {"name": "yolov6_n"},
        "data": synth_data(synth, IMAGE_SIZE),
        "recipe": {"name": "yolov6", "mosaic": {"enabled": False}, "mixup": {"enabled": False}},
        "train": {"epochs": epochs, "batch_size": 4, "eval_interval": epochs,
                  "optimizer": {"lr": lr, "scale_lr_by_batch": False},
                  "schedule": {"warmup_iters": 20, "warmup_epochs": 0}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": epochs, "keep_last": 1, "max_failures": 0},
        "storage": str(storage),
    })


def test_yolov6_n_reaches_a_bbox_map50_floor(ray_session, synth, tmp_path):
    result, losses, wall = timed_training(learn_config(synth, tmp_path / "runs"))
    map50 = result.metrics["val/bbox_mAP50"]
    print(f"yolov6_n learn: {EPOCHS} epochs at lr {LR}, mAP50 {map50:.3f} in {wall:.0f} s; train loss per epoch "
          + " ".join(f"{x:.3f}" for x in losses))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert map50 >= MAP50_FLOOR, f"bbox mAP50 {map50:.3f} < floor {MAP50_FLOOR} (measured {MEASURED_MAP50})"
