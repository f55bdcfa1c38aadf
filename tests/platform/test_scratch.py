"""Scratch directories of killed processes are removed by the next process that opens one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

_HOLDER = """
import sys, time
from detflow.scratch import scratch_dir
with scratch_dir("ckpt") as tmp:
    (tmp / "model.pt").write_bytes(b"0" * 1_000_000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def _holder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True, env=env)
    return proc, proc.stdout.readline().strip()


def test_a_killed_process_scratch_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    from pathlib import Path

    from detflow.scratch import scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed, killed_dir = _holder(tmp_path)
    live, live_dir = _holder(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert (Path(killed_dir) / "model.pt").exists()  # SIGKILL ran no cleanup
        with scratch_dir("eval") as mine:
            assert mine.is_dir() and not any(mine.iterdir())
            assert not Path(killed_dir).parent.exists(), "the killed process's scratch was left behind"
            assert (Path(live_dir) / "model.pt").exists(), "a live process's scratch was removed"
        assert not mine.exists()
    finally:
        live.kill()
        live.wait(timeout=30)
