"""Fixtures shared by the platform tests that need a real local Ray."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from scratch import lasting_dir, restore_tracking_uri  # noqa: E402


@pytest.fixture(scope="package")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs) with DETFLOW_HOME in a temporary directory; yields that home.

    Files with their own ``ray_session`` (the workflow tests) override this one."""
    home = lasting_dir(tmp_path_factory, "detflow_home")
    os.environ.update(DETFLOW_HOME=str(home), MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
                      RAY_AUTH_MODE="disabled")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import ray

    from detflow.ray_env import init_ray

    # init_ray, not ray.init: its dashboard serves the State API Ray Train needs to release a finished
    # run's placement group, and this Ray lives until the platform tests end (later modules reuse it).
    started = init_ray(num_cpus=2, log_to_driver=False)
    yield home
    if started:
        ray.shutdown()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _tracking_uri_ends_with_the_test():
    """``mlflow.set_tracking_uri`` in a test (which also exports ``MLFLOW_TRACKING_URI``) would point
    every later test's in-process runs at that test's store: undone after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    restore_tracking_uri(before)


@pytest.fixture()
def cli_env(tmp_path) -> dict[str, str]:
    """Environment of a ``python -m detflow`` subprocess: this one with a private ``DETFLOW_HOME``
    (``tmp_path/home``, so an embedded SQLite MLflow store there) and a local Ray of its own."""
    env = {**os.environ, "DETFLOW_HOME": str(tmp_path / "home"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture()
def tiny_rtmdet_base() -> dict:
    """A training config (``kind: train``) of rtmdet_tiny at 64 px on ``data/`` (synthetic), a few
    steps per epoch: the base of the tests' real sweeps (a fresh copy per test)."""
    return {
        "kind": "train", "name": "tinybase", "model": {"name": "rtmdet_tiny"},
        "data": {"train": {"annotations": "data/train.json", "images": "data/images"},
                 "val": {"annotations": "data/val.json", "images": "data/images"}, "image_size": 64},
        "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 8}, "mixup": {"max_cached_images": 4}},
        "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "schedule": {"warmup_iters": 1},
                  "optimizer": {"scale_lr_by_batch": False}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
    }
