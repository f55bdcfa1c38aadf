"""RTMDet-tiny and RTMDet-Ins-tiny learn from detflow's own initialisation (issue 25): a short real
training on the synthetic shapes set through Ray Train (1 CPU worker), asserting bbox (and, for
RTMDet-Ins, segm) mAP50 floors measured with pycocotools on the val split (the training result's
val metrics).

The run: 48 images of 96 px (40 train / 8 val), 2 classes, batch 4, the rtmdet recipe's AdamW
(β 0.9, wd 0.05, no decay on norms/biases, flat-cosine, EMA) but at lr 0.004 (RTMDet, 15 epochs) or
0.002 (RTMDet-Ins, 10 epochs) unscaled with 20 warm-up iterations (the recipe's 0.004 per 256 images and 1000-iteration warm-up cannot move in ~100 steps),
mosaic/mixup off (at 96 px a 2×2 mosaic leaves 2–10 px objects), the recipe's other augmentation kept.
Environment overrides for measuring: ``DETFLOW_LEARN_EPOCHS``, ``DETFLOW_LEARN_LR``.
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
EPOCHS = os.environ.get("DETFLOW_LEARN_EPOCHS")
LR = os.environ.get("DETFLOW_LEARN_LR")

# name: (measured bbox mAP50, bbox floor, measured segm mAP50, segm floor) after EPOCHS epochs (see the
# module docstring for the run); floors leave a margin for run-to-run variation (CPU kernels, Ray
# scheduling, thread counts).
# Measured 2026-12-06 on the shared 2-core machine under heavy load (load average ~50): rtmdet_tiny,
# 15 epochs at lr 0.004: bbox 0.175 in 188 s (train loss per epoch 0.29 → 2.03 at epoch 3 → 1.38: the
# QFL targets are IoUs, so the loss first rises; 10 epochs at 0.002 gave 0.047); rtmdet_ins_tiny,
# 10 epochs at lr 0.002: bbox 0.117, segm 0.114 in 192 s (loss 3.81 → 1.95).
RUNS = {"rtmdet_tiny": (15, 0.004), "rtmdet_ins_tiny": (10, 0.002)}  # name: (epochs, lr)
FLOORS = {
    "rtmdet_tiny": (0.175, 0.08, None, None),
    "rtmdet_ins_tiny": (0.117, 0.05, 0.114, 0.05),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=48, image_size=IMAGE_SIZE, seed=0,
                              num_classes=2, val_fraction=1 / 6)


def learn_config(synth, storage, name: str, *, epochs: int, lr: float):
    """The TrainConfig of the learning run (also used to measure the floors by hand)."""
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {
        "name": f"learn-{name}", "model": {"name": name},
        "data": synth_data(synth, IMAGE_SIZE),
        "recipe": {"name": "rtmdet", "mosaic": {"enabled": False}, "mixup": {"enabled": False}},
        "train": {"epochs": epochs, "batch_size": 4, "eval_interval": epochs,
                  "optimizer": {"lr": lr, "scale_lr_by_batch": False},
                  "schedule": {"warmup_iters": 20}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": epochs, "keep_last": 1, "max_failures": 0},
        "storage": str(storage),
    })


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_rtmdet_tiny_reaches_map50_floors(ray_session, synth, tmp_path, name):
    epochs, lr = int(EPOCHS or RUNS[name][0]), float(LR or RUNS[name][1])
    result, losses, wall = timed_training(learn_config(synth, tmp_path / "runs", name, epochs=epochs, lr=lr))
    measured_bbox, bbox_floor, measured_segm, segm_floor = FLOORS[name]
    bbox = result.metrics["val/bbox_mAP50"]
    segm = result.metrics.get("val/segm_mAP50")
    print(f"{name} learn: {epochs} epochs at lr {lr}, bbox mAP50 {bbox:.3f}, segm mAP50 {segm} in {wall:.0f} s; "
          "train loss per epoch " + " ".join(f"{x:.3f}" for x in losses))
    assert all(math.isfinite(x) for x in losses)
    assert bbox >= bbox_floor, f"bbox mAP50 {bbox:.3f} < floor {bbox_floor} (measured {measured_bbox})"
    if segm_floor is not None:
        assert segm is not None and segm >= segm_floor, f"segm mAP50 {segm} < floor {segm_floor} ({measured_segm})"
