"""YOLOv3 + ASFF learns (issue 25): a short real training on the synthetic set through Ray Train
(1 CPU worker) from detflow's own initialisation (the reference's, ``init_yolov3_asff_``), asserting
a pycocotools bbox mAP50 floor (the training result's val metrics).

79 M parameters on a CPU: this short budget (48 images at 64 px, 36 for training, 8 epochs = 72 steps)
only just moves mAP50 off zero. Optimiser: the short-budget one of workflows/configs/yolov3_asff_synth.yaml
(AdamW lr 1e-3, wd 0.05, gradient norm clipped at 10) with the recipe's progress⁴ burn-in over 10 steps;
the recipe's own SGD lr 1e-3 diverged (non-finite loss at step 28, just after the burn-in, which a
72-step run caps at a third of the run where the reference's is 5 epochs).
Measured 2026-12-07 on the shared 2-core machine (a learning benchmark running beside it): 175 s,
train/loss per epoch 232.0, 133.7, 119.9, 92.4, 87.2, 86.2, 72.9, 70.5, val bbox mAP50 0.019. The
floor guards against a run that detects nothing (or diverges), not for real accuracy, which this
family does not reach within a few CPU-minutes (docs/benchmarks.md: the 20-minute run).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from learning import synth_data, timed_training  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "yolov3_asff"
EPOCHS = 8
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=48, image_size=IMAGE_SIZE, seed=0,
                              num_classes=2, val_fraction=0.25)


def _cfg(synth, storage):
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {
        "name": "learn-yolov3-asff", "model": {"name": MODEL},
        "data": synth_data(synth, IMAGE_SIZE),
        "recipe": {"name": "yolov3_asff", "multiscale": [IMAGE_SIZE, IMAGE_SIZE], "mixup": {"enabled": False}},
        "train": {"epochs": EPOCHS, "batch_size": 4, "eval_interval": EPOCHS, "grad_clip": 10.0,
                  "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.05, "scale_lr_by_batch": False},
                  "schedule": {"warmup_iters": 10, "warmup_epochs": 0}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": EPOCHS, "keep_last": 1, "max_failures": 0},
        "storage": str(storage),
    })


def test_yolov3_asff_learns_synthetic(ray_session, synth, tmp_path):
    result, losses, elapsed = timed_training(_cfg(synth, tmp_path / "runs"))
    map50 = result.metrics["val/bbox_mAP50"]
    print(f"{MODEL}: {EPOCHS} epochs in {elapsed:.0f} s, train/loss {losses}, val bbox mAP50 {map50:.3f}")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]  # measured 0.30 ×
    assert map50 >= 0.005  # measured 0.019 (8 epochs); floor with a ~4× margin for run-to-run noise
