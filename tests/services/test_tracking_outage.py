"""Issue 19 item 4: the MLflow tracking server goes down in the middle of a real training run and
comes back a little later, on the same port and the same PostgreSQL backend store. The run must
finish (FINISHED in MLflow) with every epoch's metrics there exactly once: the epochs trained while
the server was down are spooled in the run directory and re-sent at the next epoch.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from services import MlflowServer

pytestmark = [pytest.mark.services, pytest.mark.slow]
EPOCHS = 4


@pytest.fixture(scope="module")
def outage_server(tmp_path_factory, postgres):
    """An MLflow server of its own (PostgreSQL backend, local artifacts) that this test may stop."""
    postgres.create_database("mlflow_outage")
    root = tmp_path_factory.mktemp("mlflow_outage")
    server = MlflowServer(root, backend_uri=postgres.url("mlflow_outage", "psycopg2"),
                          artifacts_destination=str(root / "artifacts")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray

    os.environ.update(DETFLOW_HOME=str(tmp_path_factory.mktemp("detflow_home")), MLFLOW_DISABLE_TELEMETRY="true",
                      RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    from detflow.ray_env import init_ray

    started = init_ray(num_cpus=2, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _config(tmp_path: Path):
    from detflow.config import TrainConfig
    from detflow.config.compose import compose
    from detflow.data import generate_synthetic

    synth = generate_synthetic(tmp_path / "synth", num_images=24, image_size=64, seed=0, val_fraction=0.25)
    return compose(TrainConfig, {
        "name": "outage", "model": {"name": "rtmdet_tiny"}, "experiment": "outage",
        "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                 "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}, "image_size": 64},
        "train": {"epochs": EPOCHS, "batch_size": 2, "max_steps_per_epoch": 4, "schedule": {"warmup_iters": 1}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep_last": 2, "max_failures": 0},
        "storage": str(tmp_path / "runs"),
    })


def _spooled_steps(runs: Path) -> set[int]:
    steps = set()
    for spool in runs.glob("outage-*/mlflow-spool.jsonl"):
        for line in spool.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "step" in record:
                steps.add(int(record["step"]))
    return steps


def _outage(server: MlflowServer, runs: Path, events: list[str]) -> None:
    """Stop the server once epoch 0's metrics are in MLflow; start it again once a later epoch has
    been spooled while it was down."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    deadline = time.time() + 600
    while time.time() < deadline:
        exp = client.get_experiment_by_name("outage")
        runs_found = client.search_runs([exp.experiment_id]) if exp else []
        if runs_found and client.get_metric_history(runs_found[0].info.run_id, "epoch"):
            server.stop()
            events.append("stopped")
            break
        time.sleep(0.5)
    while time.time() < deadline and not any(s >= 1 for s in _spooled_steps(runs)):
        time.sleep(0.5)
    events.append("spooled while down")
    time.sleep(3)
    server.start()
    events.append("restarted")


def test_training_survives_a_tracking_server_restart(outage_server, local_ray, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from detflow.train import run_training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", outage_server.url)
    cfg = _config(tmp_path)
    events: list[str] = []
    thread = threading.Thread(target=_outage, args=(outage_server, tmp_path / "runs", events), daemon=True)
    thread.start()
    result = run_training(cfg, progress=False)
    thread.join(timeout=120)
    assert events == ["stopped", "spooled while down", "restarted"], events
    assert [h["epoch"] for h in result.history] == list(range(EPOCHS))

    client = MlflowClient(outage_server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in ("epoch", "train/loss", "train/lr"):
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, key))
        assert steps == list(range(EPOCHS)), (key, steps)     # every epoch, exactly once
    losses = {m.step: m.value for m in client.get_metric_history(result.run_id, "train/loss")}
    assert losses == pytest.approx({h["epoch"]: h["train/loss"] for h in result.history})
    spool = next((tmp_path / "runs").glob("outage-*/mlflow-spool.jsonl"))
    flushed = [json.loads(line)["flushed"] for line in spool.read_text().splitlines() if "flushed" in line]
    assert sorted(flushed) == list(range(EPOCHS))
