"""``detflow bench cli``: wall time of CLI commands, each in a fresh interpreter (what a user waits for).

Cases: ``detflow --help``, ``detflow models list``, ``detflow config validate FILE`` and a cached
re-run of a workflow (``detflow run WORKFLOW``, after one un-timed run that fills the cache). Each is
run ``runs`` times as ``python -m detflow …`` in a subprocess; the median, min and max wall times
are reported beside the issue's target and the machine's 1-minute load average (timings on a busy
machine are noisy: compare medians taken at similar load).

>>> result = run_cli_bench(runs=1, workflow=None)       # doctest: +SKIP
>>> print(result.to_markdown())                         # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

__all__ = ["CliCase", "CliBenchResult", "cli_cases", "time_command", "run_cli_bench"]

DEFAULT_CONFIG = "workflows/configs/rtmdet_tiny_synth.yaml"
DEFAULT_WORKFLOW = "workflows/quickstart.yaml"


@dataclasses.dataclass(frozen=True)
class CliCase:
    """One timed command: ``argv`` after ``detflow``, its target in seconds."""

    name: str
    argv: tuple[str, ...]
    target_s: float


@dataclasses.dataclass
class CliBenchResult:
    """Per case: the wall times of every run (seconds); the load average before and after."""

    runs: int
    times: dict[str, list[float]]
    targets: dict[str, float]
    load_before: float
    load_after: float

    def summary(self, name: str) -> dict[str, float]:
        t = self.times[name]
        return {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3)}

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "load_before": self.load_before, "load_after": self.load_after,
                "cases": [{"command": name, "target_s": self.targets[name], **self.summary(name),
                           "times_s": [round(v, 3) for v in self.times[name]]} for name in self.times]}

    def to_markdown(self) -> str:
        lines = [f"median of {self.runs} runs, each a fresh `python -m detflow` process; "
                 f"1-min load average {self.load_before:.1f} before, {self.load_after:.1f} after", "",
                 "| command | median s | min s | max s | target s |", "|---|---:|---:|---:|---:|"]
        for name in self.times:
            s = self.summary(name)
            lines.append(f"| `{name}` | {s['median_s']:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} | "
                         f"< {self.targets[name]:g} |")
        return "\n".join(lines)


def cli_cases(config: str | None = DEFAULT_CONFIG, workflow: str | None = DEFAULT_WORKFLOW,
              lineage: bool = True) -> list[CliCase]:
    """The timed commands (the issue's targets); ``None`` leaves a case out."""
    cases = [CliCase("detflow --help", ("--help",), 1.0), CliCase("detflow models list", ("models", "list"), 3.0)]
    if config:
        cases.append(CliCase(f"detflow config validate {config}", ("config", "validate", config), 2.0))
    if workflow:
        argv = ("run", workflow) + (() if lineage else ("--no-lineage",))
        cases.append(CliCase(f"detflow {' '.join(argv)} (cached)", argv, 3.0))
    return cases


def time_command(argv: tuple[str, ...], env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``python -m detflow ARGV`` in a fresh process; RuntimeFailure if it fails."""
    from ..errors import RuntimeFailure

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "detflow", *argv], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeFailure(f"`detflow {' '.join(argv)}` exited {proc.returncode}: {tail[0]}")
    return elapsed


def run_cli_bench(runs: int = 5, *, config: str | None = DEFAULT_CONFIG, workflow: str | None = DEFAULT_WORKFLOW,
                  lineage: bool = True, print_fn: Callable[[str], None] | None = None) -> CliBenchResult:
    """Time every case ``runs`` times (the workflow once more first, un-timed, to fill its cache)."""
    cases = cli_cases(config, workflow, lineage)
    log = print_fn or (lambda _msg: None)
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}
    for case in cases:
        if case.argv[0] == "run":
            log(f"{case.name}: filling the cache (one un-timed run)")
            time_command(case.argv)
        times[case.name] = [time_command(case.argv) for _ in range(runs)]
        log(f"{case.name}: median {statistics.median(times[case.name]):.2f} s")
    return CliBenchResult(runs, times, {c.name: c.target_s for c in cases}, load_before, os.getloadavg()[0])
