"""detflow.train on a real local Ray (2 CPU workers, gloo): smoke run and worker-kill fault test.

One Ray instance is shared by the tests of this file (session fixture). Slow: ~1–2 min each.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=30, image_size=64, seed=0, val_fraction=0.2)


def _cfg(synth, storage: Path, name: str, **train):
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {
        "name": name, "model": {"name": "rtmdet_tiny"},
        "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                 "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}, "image_size": 64},
        "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 6}, "mixup": {"max_cached_images": 3}},
        "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 3, "schedule": {"warmup_iters": 1},
                  "optimizer": {"lr": 0.002, "scale_lr_by_batch": False}, **train},
        "scaling": {"workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep_last": 2, "max_failures": 2},
        "storage": str(storage),
    })


def _epoch_steps(run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    from detflow import tracking

    tracking.configure()
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_train_two_cpu_workers_smoke(ray_session, synth, tmp_path):
    import math

    from detflow.engine import checkpoint as ck
    from detflow.train import run_training

    result = run_training(_cfg(synth, tmp_path / "runs", "smoke"), progress=False)
    assert len(result.history) == 2
    assert all(math.isfinite(h["train/loss"]) for h in result.history)
    assert ck.is_checkpoint(result.checkpoint) and ck.is_checkpoint(result.last_checkpoint)
    model, cfg, meta = ck.load_checkpoint_model(result.checkpoint)
    assert meta["model"] == "rtmdet_tiny" and meta["num_classes"] == 4 and not model.training
    assert Path(cfg.data.train.annotations).is_absolute() and cfg.model.num_classes == 4
    state = ck.load_checkpoint_state(result.last_checkpoint)
    assert state["epoch"] == 1 and state["ema"] is not None and state["data"]  # cached-mosaic state
    assert ck.read_meta(result.last_checkpoint)["resumed_from"] == 0
    assert _epoch_steps(result.run_id, "train/loss") == [0, 1]
    assert _epoch_steps(result.run_id, "val/bbox_mAP50") == [0, 1]
    assert "val/bbox_mAP" in result.metrics


def test_worker_killed_mid_run_resumes_without_double_counting(ray_session, synth, tmp_path, monkeypatch):
    from detflow import scratch
    from detflow.engine import checkpoint as ck
    from detflow.train import run_training
    from detflow.train.worker import PID_DIR_ENV

    pid_dir = tmp_path / "pids"
    monkeypatch.setenv(PID_DIR_ENV, str(pid_dir))
    storage = tmp_path / "runs"
    killed: list[int] = []

    def registered() -> bool:  # Ray Train has registered the epoch-0 checkpoint (its state snapshot)
        return any("epoch_0000" in p.read_text() for p in storage.glob("fault-*/checkpoint_manager_snapshot.json"))

    def killer() -> None:  # kill rank 0 once the first checkpoint is registered, during epoch 1
        deadline = time.time() + 240
        while time.time() < deadline:
            pids = list(pid_dir.glob("rank0-*")) if pid_dir.exists() else []
            if pids and registered():
                pid = int(pids[0].name.split("-")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_training(_cfg(synth, storage, "fault", epochs=3, max_steps_per_epoch=6, eval_interval=3),
                          progress=False)
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert len(list(pid_dir.glob("rank0-*"))) >= 2, "no restarted worker group"
    assert ck.read_meta(result.last_checkpoint)["resumed_from"] >= 1  # restarted from a checkpoint
    assert _epoch_steps(result.run_id, "epoch") == [0, 1, 2]
    assert _epoch_steps(result.run_id, "train/loss") == [0, 1, 2]
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    # the killed worker's checkpoint scratch was removed by the restarted workers
    assert not list(scratch._root().glob(f"*-{killed[0]}")), "the killed worker's scratch folder leaked"


_DRIVER = """
import json, sys
from detflow.config import TrainConfig
from detflow.train import run_training
run_training(TrainConfig.model_validate(json.loads(sys.argv[1])), progress=False)
"""


def test_driver_killed_then_resume_continues_from_last_checkpoint(ray_session, synth, tmp_path):
    import ray

    from detflow.engine import checkpoint as ck
    from detflow.train import run_training

    storage = tmp_path / "runs"
    cfg = _cfg(synth, storage, "driver", epochs=3, max_steps_per_epoch=6, eval_interval=3)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(cfg.model_dump(mode="json"))], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while (not any("epoch_0000" in p.read_text() for p in storage.glob("driver-*/checkpoint_manager_snapshot.json"))
               and time.time() < deadline and driver.poll() is None):
            time.sleep(0.1)
        assert driver.poll() is None, "the driver ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    marker = json.loads(next(storage.glob("driver-*/detflow_run.json")).read_text())
    result = run_training(cfg, resume=True, progress=False)
    assert result.run_id == marker["run_id"]
    assert ck.read_meta(result.last_checkpoint)["resumed_from"] >= 1  # not restarted from scratch
    assert _epoch_steps(result.run_id, "epoch") == [0, 1, 2]
    assert [h["epoch"] for h in result.history] == [0, 1, 2]


def test_bad_dataset_is_refused_before_ray_starts(ray_session, synth, tmp_path):
    from detflow.errors import DataError
    from detflow.train import run_training

    bad = json.loads(Path(synth.train_json).read_text())
    bad["annotations"][0]["bbox"] = [0, 0, -5, 3]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    cfg = _cfg(synth, tmp_path / "runs", "bad")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "train": cfg.data.train.model_copy(update={"annotations": str(tmp_path / "bad.json")})})})
    with pytest.raises(DataError):
        run_training(cfg, progress=False)
