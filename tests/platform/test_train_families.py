"""Every family trains through ``detflow train`` (the CLI, a real local Ray, 1 CPU worker), and
DDP's ``find_unused_parameters`` follows the model's flag.

The end-to-end runs are slow (1–2 min each on a loaded 2-core machine): 2 epochs × 3–6 steps of
64 px images from the synthetic generator, each with its family's paper recipe.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

# That every parameter reaches the loss (so DDP needs no find_unused_parameters) is checked for
# every family by tests/models/test_contract.py; here: the worker honours the model's flag.


def test_ddp_find_unused_follows_the_model_flag_and_the_env_override(monkeypatch):
    import detmodels
    from detflow.train.worker import FIND_UNUSED_ENV, ddp_find_unused

    monkeypatch.delenv(FIND_UNUSED_ENV, raising=False)
    model = detmodels.create_model("rtmdet_tiny", num_classes=2)
    assert ddp_find_unused(model) is False and ddp_find_unused(torch.nn.Linear(2, 2)) is False
    model.has_unused_train_params = True
    assert ddp_find_unused(model) is True
    monkeypatch.setenv(FIND_UNUSED_ENV, "1")
    assert ddp_find_unused(torch.nn.Linear(2, 2)) is True


def test_ray_train_log_level_default_override_and_bad_value(monkeypatch):
    from detflow.errors import UserInputError
    from detflow.ray_env import RAY_TRAIN_LOG_LEVEL_ENV, ray_train_log_level

    monkeypatch.delenv(RAY_TRAIN_LOG_LEVEL_ENV, raising=False)
    assert ray_train_log_level() == "WARNING"
    monkeypatch.setenv(RAY_TRAIN_LOG_LEVEL_ENV, "info")
    assert ray_train_log_level() == "INFO"
    monkeypatch.setenv(RAY_TRAIN_LOG_LEVEL_ENV, "loud")
    with pytest.raises(UserInputError, match=RAY_TRAIN_LOG_LEVEL_ENV):
        ray_train_log_level()


def test_local_ray_env_switches_are_ray_trains_own():
    """The variables detflow sets for a local Ray are the ones this Ray version reads."""
    from ray.train.v2._internal import constants

    from detflow.ray_env import LOCAL_RAY_ENV_DEFAULTS, RAY_TRAIN_QUIET_ENV

    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR in LOCAL_RAY_ENV_DEFAULTS
    assert constants.ENABLE_PRINT_PATCH_ENV_VAR in RAY_TRAIN_QUIET_ENV


# --------------------------------------------------------------------------- end to end on Ray
@pytest.fixture(scope="module")
def synth16(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth16"), num_images=16, image_size=96, seed=3,
                              val_fraction=0.25)


# Per family: (recipe overrides, optimizer overrides, steps per epoch). What makes a dozen steps
# enough to see the mean loss fall (seeded, so deterministic on CPU): no LR warm-up, an LR that
# moves without diverging at batch 2, the same images at the same scale in both epochs (every
# step of the 12-image split; no scale jitter / multi-scale sizes / recipe stage switch, which
# change the loss's scale between epochs). The rest is the paper recipe.
FAMILY_RUNS = {
    "spinenet_49s": ({"name": "retinanet", "ratio_range": [1.0, 1.0]},
                     {"name": "sgd", "lr": 0.005, "scale_lr_by_batch": False}, 6),
    "yolov3_asff": ({"name": "yolov3_asff", "multiscale": [64, 64]}, {"lr": 0.001}, 3),  # 79 M params: 3 steps
    "yolov6_n": ({"name": "yolov6", "strong_aug_off_epochs": 0}, {"lr": 0.01, "scale_lr_by_batch": False}, 6),
}


def _write_config(path: Path, synth, model: str, storage: Path) -> Path:
    import yaml

    recipe, optimizer, steps = FAMILY_RUNS[model]
    cfg = {"kind": "train", "name": f"fam-{model}", "model": {"name": model},
           "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                    "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}, "image_size": 64},
           "recipe": recipe,
           "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": steps, "optimizer": optimizer,
                     "schedule": {"warmup_iters": 0, "warmup_epochs": 0}},
           "scaling": {"workers": 1, "cpus_per_worker": 1},
           "checkpoint": {"every": 1, "keep_last": 1, "max_failures": 0},
           "storage": str(storage)}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metric_history(run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    from detflow import tracking

    tracking.configure()
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(FAMILY_RUNS))
def test_family_trains_through_detflow_train_on_ray(ray_session, synth16, model, tmp_path, capsys):
    """``detflow train CONFIG --json`` on Ray: finite losses that fall from epoch 1 to epoch 2, a
    checkpoint of the right model, one MLflow run with each epoch's metrics once."""
    from detflow.cli import main
    from detflow.engine import checkpoint as ck

    storage = tmp_path / "runs"
    code = main(["train", str(_write_config(tmp_path / "train.yaml", synth16, model, storage)), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert ck.is_checkpoint(result["checkpoint"]) and ck.is_checkpoint(result["last_checkpoint"])
    meta = ck.read_meta(result["last_checkpoint"])
    assert meta["model"] == model and meta["num_classes"] == 4 and meta["epoch"] == 1
    assert Path(result["last_checkpoint"]).parent == Path(result["storage_path"])
    losses = _metric_history(result["run_id"], "train/loss")
    assert sorted(losses) == [0, 1] and all(math.isfinite(v) for v in losses.values())
    assert losses[1] < losses[0], f"{model}: mean train loss did not fall: {losses}"
    assert [h["train/loss"] for h in meta["history"]] == pytest.approx([losses[0], losses[1]])
    assert sorted(_metric_history(result["run_id"], "val/bbox_mAP50")) == [0, 1]
    assert sorted(_metric_history(result["run_id"], "epoch")) == [0, 1]
