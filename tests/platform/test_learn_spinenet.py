"""SpineNet-49S + RetinaNet learns from its own initialisation (issue 25): a short training on the
synthetic shapes set, on a real local Ray (1 worker, 1 CPU), reaches a bbox mAP50 floor measured
with pycocotools on the val split (the training result's val metrics).

The run: 48 images of 128 px (40 train / 8 val), 4 shape classes, batch 4 (10 steps per epoch), no
scale jitter, 20 epochs (200 steps), evaluated after epochs 10 and 20. Optimiser: AdamW lr 0.002, wd 0.05, cosine
with 10 warm-up iterations, no EMA (the short-budget optimiser of workflows/configs/spinenet_49s_synth.yaml).
The network is SpineNet-49S's scale-permuted architecture, initialisation and RetinaNet head at a quarter
of its width (``filter_size_scale`` 0.25 — the architecture search's proxy scale — and 64-channel
endpoints/head instead of 0.65 and 128): RetinaNet's focal loss needs a few hundred steps before it
detects anything (the full-width 49S at 96 px: val bbox mAP50 0.0001 after 60 steps, 0.0025 after 80
with anchors halved), which is more than a CI budget at full width; the full-width figure is the
20-minute run of docs/benchmarks.md.
Slow: ~2–3 min on an idle 2-core machine.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from learning import synth_data, timed_training  # noqa: E402

pytestmark = pytest.mark.slow

IMAGE_SIZE = 128
EPOCHS = 20
BACKBONE = {"filter_size_scale": 0.25, "endpoints_num_filters": 64}

# Measured 2026-12-07 on the shared 2-core machine (a learning benchmark running beside it, 189 s):
# train loss per epoch 1.754 → 1.420 (epoch 5) → 1.235 (10) → 1.130 (15) → 1.007; val bbox mAP50 0.006
# after epoch 10 and 0.063 after epoch 20 (30 epochs: 0.011 after 15, 0.042 after 30 — 8 val images
# make the figure noisy). The floor leaves a 3× margin; the loss must fall by a quarter (measured 43 %).
MEASURED_MAP50 = 0.063
MAP50_FLOOR = 0.02
LOSS_DROP_FLOOR = 0.25


@pytest.fixture(scope="module")
def synth48(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth48"), num_images=48, image_size=IMAGE_SIZE, seed=11,
                              val_fraction=1 / 6)


def learn_config(synth, storage, *, epochs: int = EPOCHS, lr: float = 0.002, optimizer: str = "adamw",
                 workers: int = 1, cpus: int = 1, eval_interval: int = EPOCHS // 2):
    """The TrainConfig of the learning run (also used to measure the floor by hand)."""
    from detflow.config import TrainConfig, parse_config

    opt = {"name": optimizer, "lr": lr, "scale_lr_by_batch": False}
    opt.update(momentum=0.9, weight_decay=4e-5) if optimizer == "sgd" else opt.update(weight_decay=0.05)
    return parse_config(TrainConfig, {
        "name": "learn-spinenet", "model": {"name": "spinenet_49s", "backbone": BACKBONE},
        "data": synth_data(synth, IMAGE_SIZE),
        "recipe": {"name": "retinanet", "ratio_range": [1.0, 1.0]},
        "train": {"epochs": epochs, "batch_size": 4, "optimizer": opt,
                  "schedule": {"name": "cosine", "warmup_iters": 10, "warmup_epochs": 0, "min_lr_ratio": 0.05},
                  "eval_interval": eval_interval},
        "scaling": {"workers": workers, "cpus_per_worker": cpus},
        "checkpoint": {"every": epochs, "keep_last": 1, "max_failures": 0},
        "storage": str(storage),
    })


def test_spinenet_49s_reaches_a_bbox_map50_floor(ray_session, synth48, tmp_path):
    result, losses, wall = timed_training(learn_config(synth48, tmp_path / "runs"))
    map50 = result.metrics["val/bbox_mAP50"]
    print(f"spinenet_49s learn: mAP50 {map50:.3f} in {wall:.0f} s; train loss per epoch "
          + " ".join(f"{x:.3f}" for x in losses))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < (1.0 - LOSS_DROP_FLOOR) * losses[0], losses
    assert 0.0 <= map50 <= 1.0
    assert map50 >= MAP50_FLOOR, f"bbox mAP50 {map50:.3f} < floor {MAP50_FLOOR} (measured {MEASURED_MAP50})"
