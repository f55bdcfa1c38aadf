"""SIGTERM and SIGHUP stop detflow commands like Ctrl-C, with real signals and real processes:

* ``detflow run`` gets SIGTERM while a step runs: it exits 143 within seconds, the workflow run is
  ``interrupted``, its MLflow parent and step runs are KILLED, no process it started (Ray) is left,
  and ``detflow resume`` then completes the run;
* ``detflow ui`` / ``detflow server`` get SIGHUP: the ``mlflow`` process group they started is gone
  when they exit.

Processes a test started are found by a unique marker in their environment (/proc/PID/environ),
which every descendant (Ray's GCS, raylet and workers, mlflow's uvicorn) inherits.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from detflow.signals import interrupt_on_signals
from detflow.workflows.state import StateStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


def _marked(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes() and " Z " not in (entry / "stat").read_text():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _left(marker: str, wait_s: float = 10.0) -> list[str]:
    """``pid: command line`` of the marked processes still alive after up to ``wait_s``."""
    deadline = time.time() + wait_s
    while _marked(marker) and time.time() < deadline:
        time.sleep(0.2)
    out = []
    for pid in _marked(marker):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            out.append(f"{pid}: {cmdline[:160].decode(errors='replace')}")
    return out


def _kill_marked(marker: str) -> None:
    for pid in _marked(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def marker_env(tmp_path):
    """Environment of a ``python -m detflow`` subprocess: private DETFLOW_HOME, MLflow store and state
    DB under tmp_path, a local Ray of its own, and a unique marker; its processes are killed afterwards."""
    marker = f"detflow-signal-test-{uuid.uuid4().hex}"
    env = {**os.environ, "DETFLOW_HOME": str(tmp_path / "home"), "DETFLOW_TEST_MARKER": marker,
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DETFLOW_LEASE_TTL_S": "10"}
    for key in ("RAY_ADDRESS", "DETFLOW_STATE_URL", "MLFLOW_BACKEND_STORE_URI"):
        env.pop(key, None)
    yield env
    _kill_marked(marker)


def _default_signals() -> None:
    """In the child: SIGTERM/SIGHUP at their defaults even when the test runs under ``nohup`` (an
    ignored signal is inherited, and detflow rightly keeps a signal ignored on entry ignored)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _detflow(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detflow", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_signals)


def test_interrupt_on_signals_maps_sigterm_and_restores_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with interrupt_on_signals() as interrupt:
            def library_handler(signum, frame):  # what ray.init installs: remembered, not installed
                raise SystemExit(signum)

            assert signal.signal(signal.SIGTERM, library_handler) is before[signal.SIGTERM]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            os.kill(os.getpid(), signal.SIGHUP)  # a repeat during the cleanup is ignored
            time.sleep(0.2)
        assert (interrupt.name, interrupt.exit_code) == ("SIGTERM", 143)
        assert signal.getsignal(signal.SIGTERM) is library_handler  # the handler asked for in the block
        assert signal.getsignal(signal.SIGHUP) is before[signal.SIGHUP]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_signal_ignored_on_entry_stays_ignored():
    """``nohup detflow run …`` ignores SIGHUP: the command must not stop on it."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupt_on_signals() as interrupt:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert interrupt.signum is None and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


SLOW_WORKFLOW = {
    "kind": "workflow",
    "name": "sigwf",
    "steps": [
        {"id": "big", "uses": "synth", "with": {"num_images": 20000, "image_size": 64, "num_classes": 2}},
        {"id": "small", "uses": "synth", "needs": ["big"], "with": {"num_images": 4, "image_size": 64}},
    ],
}


def test_sigterm_interrupts_a_workflow_run_which_resume_completes(tmp_path, marker_env):
    from mlflow.tracking import MlflowClient

    wf = tmp_path / "sigwf.yaml"
    wf.write_text(yaml.safe_dump(SLOW_WORKFLOW, sort_keys=False))
    url, run_id = f"sqlite:///{tmp_path / 'state.db'}", "sigwf-1"
    log = tmp_path / "run.log"
    proc = _detflow(["run", str(wf), "--run-id", run_id, "--state-url", url], marker_env, log)
    step_log = tmp_path / "home" / "workflows" / run_id / "big" / "step.log"
    try:
        _wait_for(lambda: step_log.exists() and "--- big attempt 1" in step_log.read_text() or proc.poll() is not None,
                  120, "the big step to start")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _marked(marker_env["DETFLOW_TEST_MARKER"]), "no Ray process found by the marker"
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 143, output[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s to stop"
    assert "SIGTERM: stopping like Ctrl-C" in output
    leftover = _left(marker_env["DETFLOW_TEST_MARKER"])
    assert not leftover, f"processes left after the driver exited: {leftover}"

    store = StateStore(url)
    run = store.get_run(run_id)
    assert run.status == "interrupted" and f"detflow resume {run_id}" in run.error
    assert run.lease_holder is None  # released on the way out: resume need not wait for expiry
    assert {s.step_id: (s.status, s.error) for s in store.steps(run_id)} == {
        "big": ("cancelled", "interrupted"), "small": ("cancelled", "interrupted")}
    client = MlflowClient(marker_env["MLFLOW_TRACKING_URI"])
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("sigwf").experiment_id])}
    assert runs[run_id].info.status == "KILLED" and runs[run_id].data.tags["detflow.status"] == "interrupted"
    assert runs["big"].info.status == "KILLED"

    spec = run.spec_dict  # let the resumed step be quick
    spec["steps"][0]["with"]["num_images"] = 8
    store.update_run(run_id, spec=json.dumps(spec))
    resumed = subprocess.run([sys.executable, "-m", "detflow", "resume", run_id, "--state-url", url, "--json"],
                             env=marker_env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {s.step_id: s.status for s in store.steps(run_id)} == {"big": "succeeded", "small": "succeeded"}
    assert store.get_run(run_id).status == "succeeded"
    assert client.get_run(runs[run_id].info.run_id).info.status == "FINISHED"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("command", ["ui", "server"])
def test_sighup_stops_the_mlflow_process_group(command, tmp_path, marker_env):
    port = _free_port()
    args = ["ui", "--port", str(port)] if command == "ui" else [
        "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
        str(tmp_path / "artifacts"), "--port", str(port)]
    log = tmp_path / f"{command}.log"
    proc = _detflow(args, marker_env, log)
    marker = marker_env["DETFLOW_TEST_MARKER"]
    try:
        _wait_for(lambda: _listening(port) or proc.poll() is not None, 120, f"detflow {command} to listen")
        assert proc.poll() is None, log.read_text()[-3000:]
        children = [pid for pid in _marked(marker) if pid != proc.pid]
        assert children, "no mlflow process found by the marker"
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(timeout=45)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-3000:]
    leftover = _left(marker)
    assert not leftover, f"processes left after detflow {command} exited: {leftover}"
    assert not _listening(port)
