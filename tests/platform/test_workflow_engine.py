"""Workflow engine on Ray with fake step kinds: parallelism, caching, retries, failure propagation,
resume after the driver is killed, cancel, concurrent drivers on one SQLite file, migrations, lineage."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
import cloudpickle  # noqa: E402

from detflow.workflows.engine import cancel_run, resume_workflow, run_workflow  # noqa: E402
from detflow.workflows.kinds import StepKind, register_step_kind  # noqa: E402
from detflow.workflows.lint import parse_workflow  # noqa: E402
from detflow.workflows.schema import StepParams  # noqa: E402
from detflow.workflows.state import StateStore, latest_version, make_engine, migrate, schema_version  # noqa: E402

# The fake kinds live in this module; Ray workers cannot import it by name, so ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAKE_SOURCE = '''
import json, os, time
from pathlib import Path
from detflow.workflows.kinds import StepKind, register_step_kind
from detflow.workflows.schema import StepParams

class FakeParams(StepParams):
    value: int = 0
    sleep: float = 0.0
    fail_times: int = 0          # fail the first N attempts
    counter: str = ""            # file with one line per execution: the step id (appends: parallel steps lose none)
    src: str | None = None

def _bump(path, key):
    if not path:
        return 0
    with open(path, "a") as f:
        f.write(key + "\\n")
    return Path(path).read_text().splitlines().count(key)

def fake_run(params, ctx):
    n = _bump(params.counter, ctx.step_id)
    start = time.time()
    if ctx.attempt <= params.fail_times:
        raise RuntimeError(f"boom on attempt {ctx.attempt}")
    time.sleep(params.sleep)
    out = ctx.path / "out.txt"
    upstream = [ctx.inputs[s]["metrics"]["value"] for s in sorted(ctx.inputs) if "metrics" in ctx.inputs[s]]
    out.write_text(str(params.value))
    return {"checkpoint": str(out), "metrics": {"value": params.value + sum(upstream)}, "start": start,
            "end": time.time(), "executions": n, "resumed": ctx.resume}

register_step_kind(StepKind("fake", FakeParams, fake_run, frozenset({"checkpoint", "metrics"})), replace=True)
'''
exec(compile(FAKE_SOURCE, __file__ + ":fake", "exec"))  # defines FakeParams, fake_run, registers "fake"


def _wf(steps: list[dict], name: str = "t") -> object:
    return parse_workflow({"name": name, "steps": steps})


def _counts(path: Path) -> dict:
    """``{step: executions}`` from the fake step's execution log."""
    lines = path.read_text().splitlines() if path.exists() else []
    return {step: lines.count(step) for step in dict.fromkeys(lines)}


@pytest.fixture(scope="session")
def ray_session():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from detflow.ray_env import init_ray

    started = init_ray(num_cpus=2)  # with the dashboard: this Ray outlives the module (session scope)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DETFLOW_STATE_URL", raising=False)
    return tmp_path


def _run(wf, home: Path, **kw):
    return run_workflow(wf, state_url=f"sqlite:///{home / 'state.db'}", lineage=kw.pop("lineage", False), quiet=True, **kw)


def _chain(counter: Path, b_value: int = 2) -> list[dict]:
    c = str(counter)
    return [
        {"id": "a", "uses": "fake", "with": {"value": 1, "counter": c}},
        {"id": "b", "uses": "fake", "needs": ["a"], "with": {"value": b_value, "counter": c, "src": "a"}},
        {"id": "c", "uses": "fake", "needs": ["b"], "with": {"value": 3, "counter": c}},
        {"id": "d", "uses": "fake", "with": {"value": 4, "counter": c}},
    ]


def test_independent_steps_run_in_parallel(ray_session, home):
    wf = _wf([{"id": "x", "uses": "fake", "with": {"sleep": 2.0}},
              {"id": "y", "uses": "fake", "with": {"sleep": 2.0, "value": 1}},
              {"id": "z", "uses": "fake", "needs": ["x", "y"]}])
    result = _run(wf, home)
    assert result.status == "succeeded"
    x, y, z = (result.outputs(s) for s in "xyz")
    assert x["start"] < y["end"] and y["start"] < x["end"], "x and y should overlap in time"
    assert z["start"] >= max(x["end"], y["end"])
    assert z["metrics"]["value"] == 0 + 1  # upstream outputs flow in: 0 (x) + 1 (y) + own 0


def test_rerun_hits_cache_and_changed_param_reruns_descendants(ray_session, home):
    counter = home / "count.json"
    first = _run(_wf(_chain(counter)), home)
    assert first.status == "succeeded" and _counts(counter) == {"a": 1, "b": 1, "c": 1, "d": 1}
    t0 = time.time()
    second = _run(_wf(_chain(counter)), home)
    assert time.time() - t0 < 10
    assert {s: v["status"] for s, v in second.steps.items()} == dict.fromkeys("abcd", "cached")
    assert _counts(counter) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert second.outputs("c") == first.outputs("c")
    third = _run(_wf(_chain(counter, b_value=20)), home)
    assert {s: v["status"] for s, v in third.steps.items()} == {"a": "cached", "b": "succeeded", "c": "succeeded",
                                                                  "d": "cached"}
    assert _counts(counter) == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert third.outputs("c")["metrics"]["value"] == 3 + (20 + 1) + 1  # own + b (with a) + a


def test_cache_not_used_when_artifacts_are_gone(ray_session, home):
    counter = home / "count.json"
    steps = [{"id": "a", "uses": "fake", "with": {"counter": str(counter)}}]
    first = _run(_wf(steps), home)
    Path(first.outputs("a")["checkpoint"]).unlink()
    second = _run(_wf(steps), home)
    assert second.steps["a"]["status"] == "succeeded" and _counts(counter) == {"a": 2}


def test_retries_then_success(ray_session, home):
    counter = home / "count.json"
    wf = _wf([{"id": "flaky", "uses": "fake", "retries": 2, "retry_delay_s": 0.2,
               "with": {"fail_times": 2, "counter": str(counter)}}])
    result = _run(wf, home)
    assert result.status == "succeeded"
    assert result.steps["flaky"]["attempts"] == 3 and _counts(counter) == {"flaky": 3}


def test_failure_marks_descendants_not_run(ray_session, home):
    counter = home / "count.json"
    wf = _wf([
        {"id": "bad", "uses": "fake", "retries": 1, "retry_delay_s": 0.1, "with": {"fail_times": 99, "counter": str(counter)}},
        {"id": "child", "uses": "fake", "needs": ["bad"]},
        {"id": "grandchild", "uses": "fake", "needs": ["child"]},
        {"id": "other", "uses": "fake", "with": {"value": 5}},
    ])
    result = _run(wf, home)
    status = {s: v["status"] for s, v in result.steps.items()}
    assert status == {"bad": "failed", "child": "not_run", "grandchild": "not_run", "other": "succeeded"}
    assert result.status == "failed"
    assert "bad" in result.error and "boom on attempt 2" in result.error
    assert result.steps["bad"]["attempts"] == 2 and _counts(counter) == {"bad": 2}


DRIVER_SCRIPT = '''
import os, sys
sys.path.insert(0, {here!r})
exec(compile({fake!r}, "fake", "exec"))
from detflow.workflows.lint import parse_workflow
from detflow.workflows.engine import run_workflow
import json
steps = json.loads({steps!r})
wf = parse_workflow({{"name": sys.argv[1], "steps": steps}})
res = run_workflow(wf, run_id=sys.argv[2], state_url=sys.argv[3], address=sys.argv[4], lineage=False, quiet=True)
print("STATUS", res.status)
'''


def _driver(tmp: Path, steps: list[dict], name: str, run_id: str, state_url: str, address: str) -> subprocess.Popen:
    script = tmp / f"driver_{name}.py"
    script.write_text(DRIVER_SCRIPT.format(here=str(tmp), fake=FAKE_SOURCE, steps=json.dumps(steps)))
    return subprocess.Popen([sys.executable, str(script), name, run_id, state_url, address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})


def _wait_for(pred, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def test_driver_killed_then_resume_skips_finished_steps(ray_session, home, monkeypatch):
    monkeypatch.setenv("DETFLOW_LEASE_TTL_S", "3")  # the killed driver's lease expires 3 s after its last renewal
    counter = home / "count.json"
    c = str(counter)
    steps = [{"id": "first", "uses": "fake", "with": {"counter": c}},
             {"id": "slow", "uses": "fake", "needs": ["first"], "with": {"sleep": 60, "counter": c}},
             {"id": "last", "uses": "fake", "needs": ["slow"], "with": {"counter": c}}]
    url = f"sqlite:///{home / 'state.db'}"
    proc = _driver(home, steps, "killme", "killme-1", url, ray_session)
    store = StateStore(url)
    try:
        _wait_for(lambda: (s := store.step("killme-1", "slow")) is not None and s.status == "running")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    _wait_for(lambda: store.get_run("killme-1").lease_expires_at < time.time(), timeout=10)
    assert store.step("killme-1", "first").status == "succeeded"
    assert _counts(counter) == {"first": 1, "slow": 1}
    # the step now runs fast: change nothing in the run's stored spec, but let the retry be quick
    store.update_run("killme-1", spec=json.dumps({"name": "killme", "steps": [
        steps[0], {**steps[1], "with": {**steps[1]["with"], "sleep": 0}}, steps[2]]}))
    result = resume_workflow("killme-1", state_url=url, lineage=False, quiet=True)
    assert result.status == "succeeded"
    assert {s: v["status"] for s, v in result.steps.items()} == dict.fromkeys(["first", "slow", "last"], "succeeded")
    assert _counts(counter) == {"first": 1, "slow": 2, "last": 1}
    # the killed attempt's log is kept in the step's storage; the resumed attempt appended to it
    log = Path(store.step("killme-1", "slow").log_path).read_text()
    assert log.count("--- slow attempt") == 2


@pytest.mark.slow
def test_two_workflows_at_once_share_one_sqlite_file(ray_session, home):
    url = f"sqlite:///{home / 'state.db'}"
    steps = [{"id": f"s{i}", "uses": "fake", "with": {"value": i}} for i in range(5)]
    steps += [{"id": "join", "uses": "fake", "needs": [f"s{i}" for i in range(5)]}]
    procs = [_driver(home, [{**s, "with": {**s.get("with", {}), "value": s.get("with", {}).get("value", 0) + 100 * k}}
                            for s in steps], f"wf{k}", f"wf{k}-1", url, ray_session) for k in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err[-2000:]
        assert "STATUS succeeded" in out
        assert "database is locked" not in err
    store = StateStore(url)
    for k in range(2):
        assert {s.status for s in store.steps(f"wf{k}-1")} == {"succeeded"}


def test_cancel_stops_running_step(ray_session, home):
    url = f"sqlite:///{home / 'state.db'}"
    wf = _wf([{"id": "long", "uses": "fake", "with": {"sleep": 120}},
              {"id": "after", "uses": "fake", "needs": ["long"]}], name="cancelme")
    box = {}
    thread = threading.Thread(target=lambda: box.update(r=run_workflow(wf, run_id="cancel-1", state_url=url,
                                                                       lineage=False, quiet=True)))
    thread.start()
    store = StateStore(url)
    _wait_for(lambda: (s := store.step("cancel-1", "long")) is not None and s.status == "running")
    t0 = time.time()
    assert cancel_run("cancel-1", state_url=url) == "cancelled"
    thread.join(timeout=30)
    assert time.time() - t0 < 30 and not thread.is_alive()
    assert box["r"].status == "cancelled"
    assert {s: v["status"] for s, v in box["r"].steps.items()} == {"long": "cancelled", "after": "cancelled"}


def test_migrations_create_and_upgrade(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert schema_version(engine) == 0
    assert migrate(engine, target=1) == 1
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO workflow_runs (id, workflow, status, spec, created_at) "
                             "VALUES ('r1', 'w', 'succeeded', '{}', 1.0)")
        cols = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(workflow_runs)")}
    assert "cancel_requested" not in cols
    assert migrate(engine) == latest_version() >= 2
    with engine.begin() as conn:
        cols = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(workflow_runs)")}
        row = conn.exec_driver_sql("SELECT id, cancel_requested FROM workflow_runs").fetchone()
        mode = conn.exec_driver_sql("PRAGMA journal_mode").fetchone()[0]
    assert {"cancel_requested", "heartbeat_at", "job_id"} <= cols
    assert tuple(row) == ("r1", 0) and mode == "wal"
    assert migrate(engine) == latest_version()  # idempotent
    store = StateStore(f"sqlite:///{tmp_path / 'm.db'}")
    assert store.get_run("r1").status == "succeeded"


def test_lineage_parent_child_runs_and_registry(ray_session, home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")

    def model_step(params, ctx):
        d = ctx.path / "ckpt"
        d.mkdir(exist_ok=True)
        (d / "model.pt").write_bytes(b"weights")
        (d / "meta.json").write_text("{}")
        return {"checkpoint": str(d), "metrics": {"val/AP50": 0.25 * (params.value + 1)}}

    register_step_kind(StepKind("fake_model", FakeParams, model_step, frozenset({"checkpoint"}), registers_model=True),
                       replace=True)
    wf = _wf([{"id": "teacher", "uses": "fake_model", "with": {"value": 1}},
              {"id": "student", "uses": "fake_model", "needs": ["teacher"], "with": {"value": 2}}], name="lin")
    result = _run(wf, home, lineage=True)
    assert result.status == "succeeded"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("lin").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name[result.run_id]
    for sid in ("teacher", "student"):
        child = by_name[sid]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["detflow.step_kind"] == "fake_model"
        assert child.data.tags["detflow.workflow_run_id"] == result.run_id
    assert by_name["student"].data.metrics["val/AP50"] == pytest.approx(0.75)
    version = client.get_model_version_by_alias("lin", "candidate")
    assert version.tags["detflow.source_step"] == "student" and str(version.version) == "2"
    assert version.tags["detflow.upstream"] == "teacher"
    # MLflow-native: the version comes from the student step's logged model, runs are readable
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == by_name["student"].info.run_id and model.model_type == "checkpoint"
    assert {m.key: m.value for m in model.metrics} == {"val/AP50": pytest.approx(0.75)}
    for run in runs:
        assert run.data.tags["mlflow.source.name"] == "detflow workflow lin"
        assert run.data.tags["mlflow.note.content"]
    assert by_name["student"].data.tags["mlflow.note.content"] == "fake_model step 'student' of workflow lin"


TINY_REAL = """
kind: workflow
name: tiny
defaults:
  model: rtmdet_tiny
  data: synth
  image_size: 64
  scaling: {workers: 1, cpus_per_worker: 1}
steps:
  - id: synth
    uses: synth
    with: {num_images: 8, image_size: 64, num_classes: 2, val_fraction: 0.25}
  - id: train
    uses: train
    needs: [synth]
    with:
      recipe: {name: plain}
      train: {epochs: 1, batch_size: 2, max_steps_per_epoch: 2, schedule: {warmup_iters: 1},
              optimizer: {scale_lr_by_batch: false}}
  - id: export
    uses: export
    needs: [train]
    with: {checkpoint: train}
  - id: bench
    uses: benchmark
    needs: [train, export]
    with: {artifacts: [train, export], backends: [torch, onnxruntime], batch_sizes: [1], warmup: 1, iters: 2}
"""


@pytest.mark.slow
def test_real_tiny_workflow_lands_in_mlflow_and_registry(ray_session, home, monkeypatch):
    """synth → train (1 epoch, 2 steps) → export → benchmark with the real step kinds."""
    from detflow import sdk

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    wf_path = home / "tiny.yaml"
    wf_path.write_text(TINY_REAL)
    url = f"sqlite:///{home / 'state.db'}"
    result = sdk.run(wf_path, state_url=url, quiet=True)
    assert result.status == "succeeded", result.error
    rows = {(r["artifact"], r["backend"]): r for r in result.outputs("bench")["rows"]}
    assert rows[("train", "torch")]["status"] == "ok" and rows[("train", "torch")]["p50_ms"] > 0
    assert rows[("export", "onnxruntime")]["status"] == "ok"
    assert Path(result.outputs("bench")["table_md"]).read_text().startswith("| artifact")
    assert result.outputs("export")["metrics"]["max_abs_diff"] < 1e-2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    names = {r.info.run_name for r in runs}
    assert {result.run_id, "synth", "train", "export", "bench"} <= names
    bench = next(r for r in runs if r.info.run_name == "bench")
    assert {a.path for a in client.list_artifacts(bench.info.run_id, "benchmark")} >= {
        "benchmark/benchmark.csv", "benchmark/benchmark.md", "benchmark/map_vs_latency.png"}
    assert any(k.endswith("p50_ms") for k in bench.data.metrics)
    versions = client.search_model_versions("name='tiny'")
    assert sorted(v.tags["detflow.source_step"] for v in versions) == ["export", "train"]
    assert client.get_model_version_by_alias("tiny", "candidate").tags["detflow.source_step"] == "export"

    t0 = time.time()
    again = sdk.run(wf_path, state_url=url, quiet=True, lineage=False)
    assert {v["status"] for v in again.steps.values()} == {"cached"} and time.time() - t0 < 15


# the same synth → train head as TINY_REAL, then ptq and evaluate steps
TINY_PTQ_EVAL = TINY_REAL.split("  - id: export")[0].replace("name: tiny", "name: tinyq") + """  - id: ptq
    uses: ptq
    needs: [train]
    with: {checkpoint: train, calib_batches: 2}
  - id: eval_fp32
    uses: evaluate
    needs: [train]
    with: {artifact: train}
  - id: eval_int8
    uses: evaluate
    needs: [ptq]
    with: {artifact: ptq}
"""


@pytest.mark.slow
def test_real_ptq_and_evaluate_steps(ray_session, home, monkeypatch):
    """synth → train → ptq (int8 Q/DQ ONNX) and evaluate of both artifacts, with the real step kinds."""
    import onnx

    from detflow import sdk

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    wf_path = home / "tinyq.yaml"
    wf_path.write_text(TINY_PTQ_EVAL)
    result = sdk.run(wf_path, state_url=f"sqlite:///{home / 'state.db'}", quiet=True)
    assert result.status == "succeeded", result.error
    int8 = result.outputs("ptq")["onnx"]
    ops = {n.op_type for n in onnx.load(int8, load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for step, backend in (("eval_fp32", "torch"), ("eval_int8", "onnxruntime")):
        out = result.outputs(step)
        assert out["backend"] == backend
        assert 0.0 <= out["metrics"]["AP50"] <= 1.0 and out["metrics"]["images"] == 2
