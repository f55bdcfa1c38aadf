"""A fully cached re-run of a workflow neither imports nor starts Ray and still writes its records;
a partly cached run starts Ray for the steps that run. Each run is a fresh interpreter, so
``sys.modules`` tells whether Ray was imported at all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A fake step kind defined in __main__ (Ray pickles it by value), a two-step chain, one run; prints
# {"status", "steps": {id: status}, "ray_imported", "ray_up"} as JSON.
SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from detflow.workflows.engine import run_workflow
    from detflow.workflows.kinds import StepKind, register_step_kind
    from detflow.workflows.lint import parse_workflow
    from detflow.workflows.schema import StepParams

    class FakeParams(StepParams):
        value: int = 0
        log: str = ""

    def fake_run(params, ctx):
        out = ctx.path / "out.txt"
        out.write_text(str(params.value))
        with open(params.log, "a") as log:  # a Ray worker has its own argv
            log.write(ctx.step_id + "\\n")
        return {"checkpoint": str(out), "metrics": {"value": params.value}}

    register_step_kind(StepKind("fake", FakeParams, fake_run, frozenset({"checkpoint", "metrics"})), replace=True)
    wf = parse_workflow({"name": "nray", "steps": [
        {"id": "a", "uses": "fake", "with": {"value": 1, "log": sys.argv[2]}},
        {"id": "b", "uses": "fake", "needs": ["a"], "with": {"value": int(sys.argv[3]), "log": sys.argv[2]}}]})
    result = run_workflow(wf, state_url=sys.argv[1], lineage=False, quiet=True, num_cpus=1)
    ray = sys.modules.get("ray")
    print(json.dumps({"status": result.status, "run_id": result.run_id,
                      "steps": {s: v["status"] for s, v in result.steps.items()},
                      "ray_imported": ray is not None, "ray_up": bool(ray and ray.is_initialized())}))
''')


def _run(tmp_path: Path, b_value: int) -> dict:
    env = {**os.environ, "DETFLOW_HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "disabled"}
    env.pop("DETFLOW_STATE_URL", None)
    env.pop("RAY_ADDRESS", None)  # a local Ray when a step runs, never a cluster of the caller's
    proc = subprocess.run([sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path / 'state.db'}",
                           str(tmp_path / "executions.log"), str(b_value)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _executions(tmp_path: Path) -> list[str]:
    return (tmp_path / "executions.log").read_text().splitlines()


@pytest.mark.timeout(600)
def test_cached_rerun_starts_no_ray_and_writes_its_records(tmp_path):
    from detflow.workflows.state import StateStore

    first = _run(tmp_path, b_value=2)
    assert first["steps"] == {"a": "succeeded", "b": "succeeded"} and first["ray_imported"]
    again = _run(tmp_path, b_value=2)
    assert again["status"] == "succeeded" and again["steps"] == {"a": "cached", "b": "cached"}
    assert not again["ray_imported"] and not again["ray_up"], "a fully cached run must not touch Ray"
    assert _executions(tmp_path) == ["a", "b"]  # nothing ran again
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")  # the re-run's records are written
    assert store.get_run(again["run_id"]).status == "succeeded"
    rows = {r.step_id: r for r in store.steps(again["run_id"])}
    assert {s: r.status for s, r in rows.items()} == {"a": "cached", "b": "cached"}
    assert all(r.cache_key and r.outputs_dict["checkpoint"] for r in rows.values())

    partial = _run(tmp_path, b_value=3)  # b changed: a stays cached, Ray starts for b only
    assert partial["steps"] == {"a": "cached", "b": "succeeded"} and partial["ray_imported"]
    assert _executions(tmp_path) == ["a", "b", "b"]
