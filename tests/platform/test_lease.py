"""The driver lease of a workflow run on SQLite: acquire / renew / expiry / release, fencing of step
and run updates, the heartbeat thread, cancel and resume against a live lease, a compare-and-set
race between real processes, and two concurrent ``detflow resume RUN`` processes (exactly one
drives the run, the other exits 2 naming the holder; every step runs once).

``race_two_resumes`` is shared with tests/services/test_lease_pg.py (the same race on PostgreSQL).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detflow.errors import UserInputError
from detflow.workflows.engine import CANCEL_REQUESTED, cancel_run, resume_workflow
from detflow.workflows.lease import (DriverLease, LeaseHeld, LeaseLost, lease_ttl, read_lease, release, renew,
                                     try_acquire)
from detflow.workflows.lint import parse_workflow
from detflow.workflows.state import StateStore

HOST = socket.gethostname()


@pytest.fixture
def store(tmp_path) -> StateStore:
    """A fresh SQLite state DB holding run ``r1`` (failed, one step ``a``)."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.create_run("r1", "wf", {"name": "wf", "steps": [{"id": "a", "uses": "synth"}]}, [("a", "synth")],
                     status="failed")
    return store


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_acquire_is_exclusive_until_the_lease_expires(store):
    eng, now = store.engine, time.time()
    assert try_acquire(eng, "r1", "h:1", 30, now=now) == 1
    assert try_acquire(eng, "r1", "h:2", 30, now=now + 29) is None
    info = read_lease(eng, "r1")
    assert (info.holder, info.host, info.pid, info.token) == ("h:1", "h", "1", 1)
    assert info.since == pytest.approx(now) and info.live(now + 29) and not info.live(now + 31)
    assert try_acquire(eng, "r1", "h:2", 30, now=now + 31) == 2  # expired: taken over, the token grows
    assert read_lease(eng, "r1").holder == "h:2"
    assert try_acquire(eng, "nope", "h:1", 30) is None  # no such run


def test_renewal_extends_the_lease_and_fails_after_a_takeover(store):
    eng, now = store.engine, time.time()
    t1 = try_acquire(eng, "r1", "h:1", 10, now=now)
    assert renew(eng, "r1", "h:1", t1, 10, now=now + 8)
    assert read_lease(eng, "r1").expires_at == pytest.approx(now + 18)
    assert store.get_run("r1").heartbeat_at == pytest.approx(now + 8)  # shown by `detflow status`
    assert try_acquire(eng, "r1", "h:2", 10, now=now + 12) is None  # live thanks to the renewal
    t2 = try_acquire(eng, "r1", "h:2", 10, now=now + 19)
    assert t2 == t1 + 1
    assert not renew(eng, "r1", "h:1", t1, 10, now=now + 20)  # the token changed: the lease is lost
    assert read_lease(eng, "r1").holder == "h:2"


def test_release_frees_the_lease_and_the_token_only_grows(store):
    eng = store.engine
    t1 = try_acquire(eng, "r1", "h:1", 30)
    assert release(eng, "r1", "h:1", t1)
    info = read_lease(eng, "r1")
    assert info.holder is None and info.expires_at is None and info.token == t1 and not info.live()
    t2 = try_acquire(eng, "r1", "h:2", 30)
    assert t2 == t1 + 1
    assert not release(eng, "r1", "h:1", t1)  # a stale holder cannot free its successor's lease
    assert read_lease(eng, "r1").holder == "h:2"


def test_fencing_token_guards_step_and_run_updates(store):
    eng, now = store.engine, time.time()
    old = try_acquire(eng, "r1", "h:1", 1, now=now - 100)  # acquired long ago, expired since
    store.update_step("r1", "a", token=old, status="running")
    new = try_acquire(eng, "r1", "h:2", 30)
    with pytest.raises(LeaseLost, match="'r1', step 'a': lease token 1 is no longer current"):
        store.update_step("r1", "a", token=old, status="failed", error="stale")
    with pytest.raises(LeaseLost, match="'r1': lease token 1 is no longer current"):
        store.update_run("r1", token=old, status="succeeded")
    assert store.step("r1", "a").status == "running" and store.step("r1", "a").error is None
    assert store.get_run("r1").status == "failed"
    store.update_step("r1", "a", token=new, status="succeeded")
    store.update_run("r1", token=new, status="running")
    assert (store.step("r1", "a").status, store.get_run("r1").status) == ("succeeded", "running")


def test_driver_lease_renews_in_the_background_and_is_released_on_exit(store, monkeypatch):
    monkeypatch.setenv("DETFLOW_LEASE_TTL_S", "1")
    with DriverLease.acquire(store.engine, "r1") as lease:
        assert lease.ttl == 1.0
        time.sleep(2.5)  # 2.5 TTLs: only the heartbeat thread keeps it live
        info = read_lease(store.engine, "r1")
        assert info.live() and info.holder == f"{HOST}:{os.getpid()}" and info.token == lease.token
        lease.check()
        with pytest.raises(LeaseHeld) as held:
            DriverLease.acquire(store.engine, "r1")
    assert held.value.exit_code == 2
    assert f"run 'r1' is being driven by pid {os.getpid()} on {HOST} since 20" in str(held.value)
    assert "\n" not in str(held.value)
    info = read_lease(store.engine, "r1")
    assert info.holder is None and info.token == lease.token


def test_heartbeat_detects_a_takeover(store, monkeypatch):
    monkeypatch.setenv("DETFLOW_LEASE_TTL_S", "0.9")
    lease = DriverLease.acquire(store.engine, "r1")
    try:
        # another driver takes the run over, as if this lease had expired
        assert try_acquire(store.engine, "r1", "otherhost:77", 30, now=time.time() + 5) == lease.token + 1
        _wait_for(lambda: lease.lost is not None, 5, "the heartbeat to notice")
        with pytest.raises(LeaseLost, match="taken over by pid 77 on otherhost"):
            lease.check()
    finally:
        lease.close()
    assert read_lease(store.engine, "r1").holder == "otherhost:77"  # close() left the new holder's lease alone


def test_lease_ttl_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("DETFLOW_LEASE_TTL_S", raising=False)
    assert lease_ttl() == 30.0
    monkeypatch.setenv("DETFLOW_LEASE_TTL_S", "2.5")
    assert lease_ttl() == 2.5
    for bad in ("abc", "0", "-3"):
        monkeypatch.setenv("DETFLOW_LEASE_TTL_S", bad)
        with pytest.raises(UserInputError, match=r"\$DETFLOW_LEASE_TTL_S: expected a number of seconds > 0"):
            lease_ttl()


def test_resume_and_cancel_respect_a_live_lease(store, monkeypatch):
    """No Ray needed: resume refuses before driving, and cancel does not finalise a driven run."""
    monkeypatch.setenv("DETFLOW_LEASE_TTL_S", "5")
    url = store.url
    store.update_run("r1", status="running")
    with DriverLease.acquire(store.engine, "r1") as lease:
        with pytest.raises(LeaseHeld, match=f"being driven by pid {os.getpid()} on {HOST} since"):
            resume_workflow("r1", state_url=url, lineage=False, quiet=True)
        t0 = time.time()
        assert cancel_run("r1", state_url=url, wait_s=1.0) == CANCEL_REQUESTED
        assert 1.0 <= time.time() - t0 < 5
        run = store.get_run("r1")
        assert run.status == "running" and run.cancel_requested == 1  # left to its driver
        assert store.step("r1", "a").status == "pending"
        assert read_lease(store.engine, "r1").token == lease.token
    assert cancel_run("r1", state_url=url, wait_s=1.0) == "cancelled"  # no live lease: finalised here
    run = store.get_run("r1")
    assert run.status == "cancelled" and run.cancel_requested == 0 and run.lease_holder is None
    assert run.lease_token == lease.token + 1  # the cancel took the lease to finalise
    assert store.step("r1", "a").status == "cancelled"


RACER = """
import os, sys, time
from detflow.workflows.lease import try_acquire
from detflow.workflows.state import StateStore
store = StateStore(sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
print("token", try_acquire(store.engine, sys.argv[2], f"racer:{os.getpid()}", 30), flush=True)
"""


def race_acquire(store: StateStore, run_id: str, go: Path, racers: int = 4) -> None:
    """``racers`` processes call ``try_acquire`` on ``run_id`` at the same moment: exactly one wins."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, store.url, run_id, str(go)], stdout=subprocess.PIPE,
                              text=True) for _ in range(racers)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    tokens = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(tokens) == ["token 1"] + ["token None"] * (racers - 1), tokens
    winner = procs[tokens.index("token 1")]
    assert read_lease(store.engine, run_id).holder == f"racer:{winner.pid}"


def test_compare_and_set_has_one_winner_among_processes(store, tmp_path):
    race_acquire(store, "r1", tmp_path / "go")


# ---------------------------------------------------------------------------------- CLI race
RACE_STEPS = [
    {"id": "s1", "uses": "synth", "with": {"num_images": 150, "image_size": 64, "num_classes": 2}},
    {"id": "s2", "uses": "synth", "needs": ["s1"], "with": {"num_images": 4, "image_size": 64, "num_classes": 2}},
]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment of a ``python -m detflow`` subprocess with its own DETFLOW_HOME and local Ray."""
    env = {**os.environ, "DETFLOW_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", **extra}
    for key in ("RAY_ADDRESS", "DETFLOW_STATE_URL", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def race_two_resumes(tmp_path: Path, state_url: str, run_id: str) -> None:
    """Create a failed run of two synth steps, start two ``detflow resume RUN`` at once, and check
    that exactly one drives it to success and the other exits 2 naming the holder (host, pid, since)."""
    home = tmp_path / "home"
    store = StateStore(state_url)
    wf = parse_workflow({"name": "race", "steps": RACE_STEPS})
    store.create_run(run_id, wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps], status="failed")
    cmd = [sys.executable, "-m", "detflow", "resume", run_id, "--state-url", state_url, "--no-lineage"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(home))
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [(p.returncode, out[-1500:], err[-3000:]) for p, (out, err) in zip(procs, outs)]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    message = outs[loser][1].strip().splitlines()[-1]
    assert message.startswith(f"error: run {run_id!r} is being driven by pid {procs[winner].pid} on {HOST} since 20"), message
    assert f"`detflow cancel {run_id}`" in message
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.lease_holder is None and run.lease_token == 1
    for step in store.steps(run_id):
        assert (step.status, step.attempts) == ("succeeded", 1), step.step_id
        log = Path(step.log_path).read_text()
        assert log.count(f"--- {step.step_id} attempt") == 1, log  # the step body ran exactly once


def test_two_concurrent_resumes_one_drives_the_other_exits_2(tmp_path):
    race_two_resumes(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", "race-sqlite")


def test_a_driver_whose_lease_is_taken_over_stops_without_writing(tmp_path):
    """The heartbeat finds another token: `detflow run` stops launching steps, writes nothing more
    (fenced) and exits 1 naming the new holder."""
    url, run_id = f"sqlite:///{tmp_path / 'state.db'}", "stolen-1"
    wf = tmp_path / "wf.yaml"
    wf.write_text(json.dumps({"kind": "workflow", "name": "stolen", "steps": [
        {"id": "big", "uses": "synth", "with": {"num_images": 20000, "image_size": 64, "num_classes": 2}},
        {"id": "after", "uses": "synth", "needs": ["big"], "with": {"num_images": 4, "image_size": 64}}]}))
    proc = subprocess.Popen([sys.executable, "-m", "detflow", "run", str(wf), "--run-id", run_id, "--state-url", url,
                             "--no-lineage"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(tmp_path / "home", DETFLOW_LEASE_TTL_S="3"), start_new_session=True)
    store = StateStore(url)
    try:
        _wait_for(lambda: proc.poll() is not None or ((s := store.step(run_id, "big")) is not None
                                                       and s.status == "running"), 120, "the big step to start")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        stolen = try_acquire(store.engine, run_id, "thief:4242", 60, now=time.time() + 100)
        t0 = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert stolen == 2 and time.time() - t0 < 30
    assert proc.returncode == 1, err[-3000:]
    assert "this driver's lease (token 1) was taken over by pid 4242 on thief" in err.strip().splitlines()[-1]
    run = store.get_run(run_id)
    assert (run.status, run.lease_holder, run.lease_token) == ("running", "thief:4242", 2)  # left to the thief
    assert {s.step_id: s.status for s in store.steps(run_id)} == {"big": "running", "after": "pending"}
