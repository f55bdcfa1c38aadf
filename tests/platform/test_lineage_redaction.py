"""A credentialed Optuna storage URL in a sweep step never reaches MLflow, the state DB or sweep.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from detflow.tune.config import SweepConfig
from detflow.tune.runner import _write_sweep_record
from detflow.workflows.engine import RunResult
from detflow.workflows.lint import parse_workflow
from detflow.workflows.state import StateStore

PASSWORD = "Hunter2-Pg-Secret"
OPTUNA_URL = f"postgresql+psycopg2://optuna:{PASSWORD}@db.internal:5432/optuna"
SPACE = {"model.assigner.soft_center_alpha": {"uniform": [5.0, 20.0]}}


def _workflow():
    split = {"annotations": "/data/ann.json", "images": "/data/images"}
    return parse_workflow({"name": "redact", "defaults": {"model": "rtmdet_tiny", "data": {"train": split, "val": split}},
                           "steps": [
        {"id": "sweep", "uses": "sweep", "with": {"recipe": {"name": "plain"}, "space": SPACE, "metric": "train/loss",
                                                  "mode": "min", "num_samples": 1,
                                                  "search": {"name": "tpe", "storage": OPTUNA_URL}}}]})


def _leaks(path: Path) -> list[str]:
    return [str(f) for f in path.rglob("*") if f.is_file() and PASSWORD.encode() in f.read_bytes()]


def test_state_db_keeps_no_password_in_spec_or_errors(tmp_path):
    wf = _workflow()
    assert OPTUNA_URL in json.dumps(wf.to_dict())  # the in-memory spec still works for this run
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.create_run("r1", wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps])
    store.update_step("r1", "sweep", status="failed",
                      error=f"OperationalError: could not connect to {OPTUNA_URL} (password={PASSWORD})")
    stored = store.get_run("r1").spec_dict["steps"][0]["with"]["search"]["storage"]
    assert stored == "postgresql+psycopg2://optuna@db.internal:5432/optuna"  # usable with PGPASSWORD on resume
    parse_workflow(store.get_run("r1").spec_dict)  # what resume parses
    error = store.step("r1", "sweep").error
    assert PASSWORD not in error and "db.internal:5432/optuna" in error
    store.engine.dispose()
    assert _leaks(tmp_path) == []


def test_mlflow_params_artifacts_and_tags_keep_no_password(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    from detflow.workflows.lineage import Lineage

    wf = _workflow()
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.create_run("r1", wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps])
    error = f"OperationalError: could not connect to {OPTUNA_URL}"
    store.update_step("r1", "sweep", status="failed", error=error)
    lineage = Lineage(wf, "r1")
    parent = lineage.start_workflow()
    child = lineage.start_step(wf.steps[0], "key")
    lineage.step_failed(wf.steps[0], child, error)
    result = RunResult.from_store(store, "r1")
    result.steps["sweep"]["error"] = error  # as if read from an older, unredacted state DB
    lineage.finish("failed", result)

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    params = client.get_run(child).data.params
    assert params["search.storage"] == "postgresql+psycopg2://***@db.internal:5432/optuna"
    texts = [json.dumps(client.get_run(r).data.params) + json.dumps(client.get_run(r).data.tags) for r in (parent, child)]
    assert not [t for t in texts if PASSWORD in t]
    assert "db.internal" in client.get_run(child).data.tags["detflow.error"]
    for run_id in (parent, child):
        out = tmp_path / "downloaded" / run_id
        out.mkdir(parents=True)
        client.download_artifacts(run_id, "", str(out))
    assert {p.name for p in (tmp_path / "downloaded" / parent).iterdir()} >= {"workflow.yaml", "steps.json"}
    assert _leaks(tmp_path / "downloaded") == []
    store.engine.dispose()
    assert _leaks(tmp_path) == []  # state DB, MLflow DB and artifact store included


def test_sweep_json_keeps_no_password(tmp_path):
    cfg = SweepConfig.model_validate({"name": "s", "base": "b.yaml", "space": SPACE,
                                      "search": {"name": "tpe", "storage": OPTUNA_URL}})
    path = _write_sweep_record(tmp_path, cfg, tmp_path)
    assert PASSWORD not in path.read_text()
    stored = SweepConfig.model_validate(json.loads(path.read_text())["config"])  # what --resume reads back
    assert stored.search.storage == "postgresql+psycopg2://optuna@db.internal:5432/optuna"
    assert stored.model_dump(exclude={"search"}) == cfg.model_dump(exclude={"search"})
