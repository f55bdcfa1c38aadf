"""Running ``python -m detflow`` in a subprocess, as a user would, and reading its ``--json`` output."""
from __future__ import annotations

import json
import subprocess
import sys

__all__ = ["run_cli", "cli_json"]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    """``python -m detflow ARGS`` in a subprocess; raises with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "detflow", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"detflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def cli_json(stdout: str) -> dict:
    """The indented JSON document that ends a ``--json`` command's output (after its log lines)."""
    text = "\n" + stdout
    return json.loads(text[text.rindex("\n{\n") + 1:])
