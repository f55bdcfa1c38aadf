"""The driver lease on PostgreSQL: fencing of stale updates, one winner among processes racing
for a run's lease, and two concurrent ``detflow resume RUN`` processes (exactly one drives the run,
the other exits 2 naming the holder). The scenarios are those of tests/platform/test_lease.py."""
from __future__ import annotations

import secrets
import time

import pytest
from scenarios import platform_test_module

pytestmark = pytest.mark.services


def _scenarios():
    return platform_test_module("test_lease.py")


def _new_run(state_url: str) -> tuple[object, str]:
    from detflow.workflows.state import StateStore

    store = StateStore(state_url)
    run_id = f"lease-pg-{secrets.token_hex(3)}"
    store.create_run(run_id, "wf", {"name": "wf", "steps": [{"id": "a", "uses": "synth"}]}, [("a", "synth")],
                     status="failed")
    return store, run_id


def test_fencing_on_postgresql(state_url):
    from detflow.workflows.lease import LeaseLost, try_acquire

    store, run_id = _new_run(state_url)
    assert store.engine.dialect.name == "postgresql"
    old = try_acquire(store.engine, run_id, "h:1", 1, now=time.time() - 100)
    new = try_acquire(store.engine, run_id, "h:2", 30)
    assert (old, new) == (1, 2)
    with pytest.raises(LeaseLost):
        store.update_step(run_id, "a", token=old, status="failed")
    with pytest.raises(LeaseLost):
        store.update_run(run_id, token=old, status="succeeded")
    assert (store.step(run_id, "a").status, store.get_run(run_id).status) == ("pending", "failed")
    store.update_step(run_id, "a", token=new, status="succeeded")
    assert store.step(run_id, "a").status == "succeeded"


def test_compare_and_set_has_one_winner_on_postgresql(state_url, tmp_path):
    store, run_id = _new_run(state_url)
    _scenarios().race_acquire(store, run_id, tmp_path / "go")


def test_two_concurrent_resumes_on_postgresql(state_url, tmp_path):
    _scenarios().race_two_resumes(tmp_path, state_url, f"race-pg-{secrets.token_hex(3)}")
