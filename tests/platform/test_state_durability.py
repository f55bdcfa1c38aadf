"""Workflow state durability (issue 19 item 11): cancel without a live driver ends the MLflow runs,
stored errors are redacted, migrations of a fresh database are serialised (SQLite here; PostgreSQL in
tests/services/test_state_pg.py)."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from detflow.workflows.engine import cancel_run
from detflow.workflows.lease import try_acquire
from detflow.workflows.state import StateStore, latest_version, make_engine, schema_version

SECRET_URL = "postgresql://u:secret@h/db"


@pytest.fixture
def state(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    return StateStore(url), tmp_path / "state.db"


def _raw_errors(db) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT error FROM workflow_runs UNION ALL SELECT error FROM step_runs").fetchall()
    return [r[0] for r in rows if r[0]]


def test_stored_errors_are_redacted(state):
    store, db = state
    store.create_run("r1", "wf", {"name": "wf"}, [("a", "train")], status="running")
    store.update_run("r1", error=f"driver failed: OperationalError: could not connect to {SECRET_URL}")
    store.update_step("r1", "a", status="failed", error=f"ValueError: {SECRET_URL} refused")
    errors = _raw_errors(db)
    assert len(errors) == 2 and all("secret" not in e for e in errors)
    assert all("postgresql://" in e and "@h/db" in e for e in errors)  # the rest of the message is kept


def test_cancel_without_a_live_driver_ends_the_mlflow_runs(state, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from detflow.tracking import configure

    client = MlflowClient(configure())
    exp = client.create_experiment("wf")
    parent = client.create_run(exp, run_name="wf-run").info.run_id
    steps = {sid: client.create_run(exp, run_name=sid, tags={"mlflow.parentRunId": parent}).info.run_id
             for sid in ("train", "export")}
    train_exp = client.create_experiment("detflow")  # the step's training logs to its own experiment
    nested = client.create_run(train_exp, run_name="t", tags={"mlflow.parentRunId": steps["train"]}).info.run_id
    client.set_terminated(steps["export"], "FINISHED")  # a finished step keeps its status

    store, _ = state
    store.create_run("r2", "wf", {"name": "wf"}, [("train", "train"), ("export", "export")], status="running")
    store.update_run("r2", mlflow_run_id=parent)
    for sid, rid in steps.items():
        store.update_step("r2", sid, status="running" if sid == "train" else "succeeded", mlflow_run_id=rid)
    # its driver died: the lease it held expired long ago
    assert try_acquire(store.engine, "r2", "gone-host:4242", 30, now=time.time() - 3600) == 1

    assert cancel_run("r2", state_url=store.url, wait_s=0) == "cancelled"
    status = {rid: client.get_run(rid).info.status for rid in (parent, *steps.values(), nested)}
    assert status == {parent: "KILLED", steps["train"]: "KILLED", nested: "KILLED", steps["export"]: "FINISHED"}
    assert client.get_run(parent).data.tags["detflow.status"] == "cancelled"
    assert store.get_run("r2").status == "cancelled" and store.step("r2", "train").status == "cancelled"


# Both processes sleep until the same instant, then migrate the same fresh database.
MIGRATE = """
import sys, time
from detflow.workflows.state import make_engine, migrate
time.sleep(max(float(sys.argv[2]) - time.time(), 0))
print(migrate(make_engine(sys.argv[1])))
"""


def migrate_concurrently(url: str, n: int = 2) -> list[str]:
    """Run ``migrate`` on ``url`` in ``n`` processes started together; their outputs (the versions)."""
    start = time.time() + 8.0  # after both interpreters have imported detflow
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, url, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err[-2000:] for _, err in outs]
    return [out.strip() for out, _ in outs]


def test_concurrent_first_migrations_both_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert migrate_concurrently(url, n=3) == [str(latest_version())] * 3
    engine = make_engine(url)
    assert schema_version(engine) == latest_version()
    with engine.connect() as conn:
        versions = [r[0] for r in conn.exec_driver_sql("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, latest_version() + 1))  # each migration recorded once


def test_schema_version_of_an_empty_database_creates_nothing(tmp_path):
    from sqlalchemy import inspect

    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert schema_version(engine) == 0
    assert inspect(engine).get_table_names() == []
