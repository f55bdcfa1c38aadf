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
    """The last JSON document of a ``--json`` command's output: one line, or indented from a ``{`` line
    to its ``}`` line. Log lines around it are skipped, including Ray's raylet warnings, which its log
    monitor may print after the document."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].rstrip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
        if line == "{":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "}")
            return json.loads("\n".join(lines[i:end + 1]))
    raise ValueError(f"no JSON document in the command's output: …{stdout[-500:]!r}")
