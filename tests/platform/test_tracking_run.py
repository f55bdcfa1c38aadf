"""detflow.tracking.Run, the one seam to MLflow, on a real embedded SQLite store: child runs,
redacted params/tags/artifacts, figures, searches, the model registry, ending runs."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from detflow import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretvalue")
    yield MlflowClient(tracking.configure())
    mlflow.set_tracking_uri(None)


def test_children_params_tags_and_ending(store):
    parent = tracking.Run.create("sweep", experiment="run-test", tags={"db": "postgresql://u:pw@h/x"})
    a, b = parent.child("trial-a", tags={"detflow.trial_id": "a"}), parent.child("trial-b")
    assert {r.run_id for r in parent.children()} == {a.run_id, b.run_id}
    b.end("FINISHED")
    running = parent.children(status="RUNNING")
    assert [r.run_id for r in running] == [a.run_id] and running[0].found.data.tags["detflow.trial_id"] == "a"
    for run in running:
        run.end("KILLED")
    assert store.get_run(a.run_id).info.status == "KILLED"
    assert store.get_run(parent.run_id).data.tags["db"] == "postgresql://***@h/x"
    logged = parent.log_params({"lr": 0.01, "api_token": "t0k", "note": "key verysecretvalue", "dims": [1, 2]})
    params = store.get_run(parent.run_id).data.params
    assert params == logged == {"lr": "0.01", "api_token": "***", "note": "key ***", "dims": "[1, 2]"}
    assert parent.log_params({"lr": 0.5, "new": 1}, skip_existing=True) == {"new": "1"}
    found = tracking.search_runs("tags.detflow.trial_id = 'a'")
    assert [r.run_id for r in found] == [a.run_id]


def test_metrics_artifacts_and_figures(store, tmp_path):
    from matplotlib.figure import Figure

    run = tracking.Run.create("r", experiment="run-test")
    assert run.log_metrics(2, {"a": 1, "nested": {"b": 2.5}, "flag": True, "s": "x"}) == {"a": 1.0, "nested/b": 2.5}
    assert run.metric_history("nested/b")[0][:2] == (2, 2.5)
    (tmp_path / "t.csv").write_text("x\n1\n")
    run.log_artifact(tmp_path / "t.csv", "tables")
    run.log_dict({"password": "p", "ok": 1}, "cfg/spec.json")
    fig = Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    run.log_figure(fig, "plots/curve.png")
    paths = {f.path for d in ("tables", "cfg", "plots") for f in store.list_artifacts(run.run_id, d)}
    assert paths == {"tables/t.csv", "cfg/spec.json", "plots/curve.png"}
    spec = json.loads(Path(store.download_artifacts(run.run_id, "cfg/spec.json", str(tmp_path))).read_text())
    assert spec == {"password": "***", "ok": 1}


def test_register_model_and_alias(store, tmp_path):
    run = tracking.Run.create("step", experiment="run-test")
    (tmp_path / "model.pt").write_bytes(b"weights")
    run.log_artifact(tmp_path / "model.pt", "model")
    first = run.register_model("wf-model", "model", tags={"detflow.teacher": "s3://u:pw@h/t"}, alias="candidate")
    second = run.register_model("wf-model", "model", alias="candidate")
    assert (first, second) == ("1", "2")
    version = store.get_model_version_by_alias("wf-model", "candidate")
    assert str(version.version) == "2" and version.run_id == run.run_id
    assert store.get_model_version("wf-model", "1").tags["detflow.teacher"] == "s3://***@h/t"
