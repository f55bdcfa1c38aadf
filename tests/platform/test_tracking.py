"""Tracking into a temporary embedded store: runs, params, tags, metrics, artifacts, nesting, secrets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import detflow
import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from detflow import tracking
from detflow.errors import UserInputError


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("detflow_home")


@pytest.fixture
def store(store_dir, monkeypatch):
    """Point detflow at a store in a temporary DETFLOW_HOME (shared by this module's tests)."""
    monkeypatch.setenv("DETFLOW_HOME", str(store_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield store_dir
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # also unsets the MLFLOW_TRACKING_URI mlflow exported


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png", "notes.txt"):
        (images / name).write_bytes(b"x")
    return ann, images


def test_configure_defaults_and_env_override(store, monkeypatch):
    uri = tracking.configure()
    assert uri == f"sqlite:///{store / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'other.db'}")
    assert tracking.configure().endswith("other.db")


def test_run_logs_config_context_metrics_and_artifacts(store, tmp_path):
    cfg = {"name": "t", "train": {"epochs": 3, "lr": 0.01, "sizes": [1, 2]},
           "storage": "s3://AKIAXXX:hunter2@bucket/prefix",
           "s3": {"access_key": "AKIAXXX", "secret_access_key": "hunter2", "session_token": "tok",
                  "password": "pw", "cache_key": "abc"}}
    ann, images = _dataset(tmp_path)
    with tracking.start_run("unit", experiment="tracking-test", tags={"purpose": "test"}) as run:
        params = tracking.log_config(cfg)
        tags = tracking.log_run_context(seed=7, dataset=(ann, images))
        for epoch, (ap, loss) in enumerate([(0.1, 2.0), (0.3, 1.0), (0.2, 1.5)], start=1):
            tracking.log_metrics({"AP": ap, "loss": loss, "per_class": {"cat a": ap}, "note": "x"}, step=epoch)
            tracking.log_best({"AP": ap, "loss": loss}, step=epoch)
        fig = tracking.plot_curves([{"epoch": 1, "AP": 0.1}, {"epoch": 2, "AP": 0.3}], ["AP", "loss"])
        tracking.log_figure(fig, "plots/curves.png")
        run_id = run.info.run_id
    client = MlflowClient()
    data = client.get_run(run_id).data
    assert client.get_run(run_id).info.status == "FINISHED"
    # params: flattened, secrets redacted (values never stored), known keys kept
    assert data.params["train.epochs"] == "3" and data.params["train.sizes"] == "[1, 2]"
    for key in ("s3.access_key", "s3.secret_access_key", "s3.session_token", "s3.password"):
        assert data.params[key] == "***"
    assert data.params["s3.cache_key"] == "abc"
    assert data.params["storage"] == "s3://***@bucket/prefix"
    assert "hunter2" not in json.dumps(params)
    # tags
    assert data.tags["purpose"] == "test" and data.tags["seed"] == "7"
    assert data.tags["detflow.version"] == detflow.__version__
    assert data.tags["dataset.images"] == "2"
    assert data.tags["dataset.fingerprint"] == tracking.dataset_fingerprint(ann, images) == tags["dataset.fingerprint"]
    assert data.tags["torch.version"] and data.tags["hardware.cpu_count"].isdigit()
    assert "hardware.gpu" in data.tags and not any("hostname" in k for k in data.tags)
    if "detflow.git_commit" in tags:  # absent only outside a git checkout
        assert len(data.tags["detflow.git_commit"]) == 40 and data.tags["detflow.git_dirty"] in ("true", "false")
    # metrics per step and best-so-far
    history = client.get_metric_history(run_id, "AP")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.1), (2, 0.3), (3, 0.2)]
    assert data.metrics["best/AP"] == pytest.approx(0.3) and data.metrics["best/loss"] == pytest.approx(1.0)
    assert data.metrics["per_class/cat a"] == pytest.approx(0.2)
    assert "note" not in data.metrics
    # artifacts under the embedded artifact root
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"config.yaml", "plots/curves.png"} <= names
    art = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    assert str(art).startswith(str(store / "mlartifacts"))
    logged = yaml.safe_load((art / "config.yaml").read_text())
    assert logged["s3"]["secret_access_key"] == "***" and logged["train"]["epochs"] == 3


def test_nested_and_resumed_runs(store):
    with tracking.start_run("parent", experiment="tracking-test") as parent:
        with tracking.start_run("child-auto") as child:
            child_id = child.info.run_id
    with tracking.start_run("child-explicit", parent_run_id=parent.info.run_id) as child2:
        pass
    client = MlflowClient()
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(child2.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    with tracking.start_run("ignored", run_id=child_id):
        tracking.log_metrics({"AP": 0.5}, step=9)
    assert client.get_run(child_id).data.metrics["AP"] == 0.5
    with pytest.raises(UserInputError, match="no such MLflow run"):
        with tracking.start_run("x", run_id="0" * 32):
            pass


def test_failed_run_status_and_param_cap(store):
    with pytest.raises(ValueError):
        with tracking.start_run("fails", experiment="tracking-test") as run:
            logged = tracking.log_config({f"p{i}": i for i in range(250)}, max_params=200)
            raise ValueError("boom")
    run = MlflowClient().get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert len(logged) == 200 and len(run.data.params) == 200
    assert run.data.tags["detflow.params_truncated"] == "logged 200 of 250"


def test_redaction_helpers():
    assert tracking.is_secret_key("AWS_SECRET_ACCESS_KEY") and tracking.is_secret_key("api_key")
    assert not tracking.is_secret_key("epochs") and not tracking.is_secret_key("cache_key")
    assert not tracking.is_secret_key("detflow.cache_key") and tracking.is_secret_key("s3.secret_key")
    assert tracking.redact_url("postgresql://user:pw@db:5432/x") == "postgresql://***@db:5432/x"
    assert tracking.redact({"a": [{"token": "t"}], "b": None, "password": ""}) == {"a": [{"token": "***"}], "b": None, "password": ""}


def test_dataset_fingerprint_changes_with_content(tmp_path):
    ann, images = _dataset(tmp_path)
    first = tracking.dataset_fingerprint(ann, images)
    assert first.startswith("sha256:") and first.endswith(":images=2")
    ann.write_text(ann.read_text() + " ")
    assert tracking.dataset_fingerprint(ann, images) != first


def test_user_sqlite_uri_keeps_artifacts_next_to_it(store, tmp_path, monkeypatch):
    tracking.configure()
    tracking.ensure_experiment("tracking-test")  # make sure the module's store exists
    shutil.copy(store / "mlflow.db", tmp_path / "user.db")  # an initialised DB: no slow migrations
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    with tracking.start_run("u", experiment="user-store") as run:
        tracking.log_metrics({"AP": 1.0}, step=0)
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_best_mode_defaults():
    from detflow.tracking.runs import _default_mode

    assert [_default_mode(k) for k in ("val/AP", "val/bbox_mAP_s", "APs", "train/loss_cls", "latency_ms", "epoch_time")] == \
        ["max", "max", "max", "min", "min", "min"]


def test_log_best_keeps_running_best_with_explicit_modes(store):
    with tracking.start_run("best", experiment="tracking-test") as run:
        assert tracking.log_best({"err": 0.5, "AP": 0.2}, {"err": "min"}) == {"err": 0.5, "AP": 0.2}
        assert tracking.log_best({"err": 0.7, "AP": 0.4}, {"err": "min"}) == {"AP": 0.4}
        assert tracking.log_best({"err": float("nan")}, {"err": "min"}) == {}
        with pytest.raises(ValueError, match="'max' or 'min'"):
            tracking.log_best({"x": 1.0}, lambda k: "up")
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert metrics["best/err"] == 0.5 and metrics["best/AP"] == 0.4
