"""The workflow driver: runs a validated DAG on Ray with durable state, caching, retries and cancel.

Each ready step (all ``needs`` succeeded or cached) is first looked up in the cache (same key,
artifacts still present); otherwise it runs as a Ray task with the step's resources. Independent
steps run in parallel. A failed attempt is retried ``retries`` times with exponential backoff; a
step that still fails marks its descendants ``not_run`` and the run ``failed`` (independent branches
finish). ``detflow cancel`` sets a flag the driver polls: running tasks are cancelled (forced) and
pending steps marked ``cancelled``. ``resume`` re-drives a run: finished steps are kept, the rest run
again (a training step finds its own checkpoints in its step directory).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import RuntimeFailure, UserInputError
from ..paths import state_dir
from .cache import outputs_exist, step_keys, topological_order
from .context import StepContext
from .schema import Workflow
from .state import RunStatus, StateStore, StepStatus

__all__ = ["run_workflow", "resume_workflow", "new_run_id", "RunResult", "run_dir", "ray_session", "cancel_run",
           "driver_lost"]

HEARTBEAT_S = 5.0
POLL_S = 0.5


def new_run_id(workflow: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{workflow[:40]}-{stamp}-{secrets.token_hex(2)}"


def run_dir(run_id: str) -> Path:
    return state_dir() / "workflows" / run_id


@dataclass
class RunResult:
    """Outcome of a workflow run: ``steps[step_id]`` = ``{status, attempts, outputs, error, duration_s}``."""

    run_id: str
    status: str
    error: str | None = None
    steps: dict[str, dict] = field(default_factory=dict)
    workflow: str = ""

    def outputs(self, step_id: str) -> dict:
        return self.steps[step_id]["outputs"]

    @classmethod
    def from_store(cls, store: StateStore, run_id: str) -> "RunResult":
        run = store.get_run(run_id)
        steps = {s.step_id: {"status": s.status, "attempts": s.attempts, "outputs": s.outputs_dict,
                             "error": s.error, "duration_s": s.duration_s, "kind": s.kind,
                             "mlflow_run_id": s.mlflow_run_id} for s in store.steps(run_id)}
        return cls(run_id, run.status, run.error, steps, run.workflow)


# ------------------------------------------------------------------------------------ Ray bits
@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray already initialised in this process, connect to ``address`` (or ``$RAY_ADDRESS``),
    or start a local Ray for the run (stopped afterwards)."""
    import ray

    if ray.is_initialized():
        yield
        return
    from ..ray_env import init_ray

    init_ray(address, num_cpus=num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


class _Tee:
    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, data: str) -> int:
        for s in self.streams:
            s.write(data)
            s.flush()
        return len(data)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def __getattr__(self, name: str) -> Any:
        """Other file attributes (``encoding``, ``isatty``, ``fileno`` — Ray Tune reads them) of the
        original stream."""
        return getattr(self.streams[0], name)


def _execute_step(run_fn: Callable[..., dict], params: Any, ctx: StepContext) -> dict:
    """Body of the Ray task: run the step, teeing stdout/stderr into the step's log file."""
    ctx.apply_env()
    ctx.path  # create the step dir
    with open(ctx.log_path, "a", buffering=1) as log:
        log.write(f"--- {ctx.step_id} attempt {ctx.attempt} ({_dt.datetime.now():%Y-%m-%d %H:%M:%S})\n")
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            outputs = run_fn(params, ctx)
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = out, err
    outputs = dict(outputs or {})
    json.dumps(outputs)  # outputs must be JSON (they go to the state DB)
    return outputs


def _error_text(exc: BaseException) -> tuple[str, bool]:
    """(one-line error, retriable?) — bad user input is not retried."""
    cause = getattr(exc, "cause", None) or exc
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()] or [""]
    # Ray's own errors (OOM kill, worker crash) lead with the reason; Python errors end with it
    line = lines[0] if type(cause).__module__.startswith("ray") else lines[-1]
    return f"{type(cause).__name__}: {line}"[:1000], not isinstance(cause, UserInputError)


# -------------------------------------------------------------------------------------- driver
class _Driver:
    def __init__(self, wf: Workflow, run_id: str, store: StateStore, lineage: Any, log: Callable[[str], None]):
        self.wf, self.run_id, self.store, self.lineage, self.log = wf, run_id, store, lineage, log
        self.keys = step_keys(wf)
        self.order = topological_order(wf)
        self.rows = {s.step_id: s for s in store.steps(run_id)}
        self.running: dict[Any, str] = {}
        self.next_at: dict[str, float] = {}
        self.attempts: dict[str, int] = {sid: 0 for sid in self.order}
        self.last_beat = 0.0
        import ray

        self.remote = ray.remote(_execute_step)

    # state helpers
    def status(self, sid: str) -> str:
        return self.rows[sid].status

    def set(self, sid: str, **fields: Any) -> None:
        self.store.update_step(self.run_id, sid, **fields)
        row = self.rows[sid]
        for key, value in fields.items():
            setattr(row, key, json.dumps(value) if key == "outputs" and not isinstance(value, str) else value)

    def ancestors(self, sid: str) -> set[str]:
        found: set[str] = set()
        stack = list(self.wf.step(sid).needs)
        while stack:
            up = stack.pop()
            if up not in found:
                found.add(up)
                stack.extend(self.wf.step(up).needs)
        return found

    def inputs_for(self, sid: str) -> dict[str, dict]:
        """Outputs of the step's (transitive) upstream steps."""
        ups = self.ancestors(sid)
        return {u: self.rows[u].outputs_dict for u in self.order if u in ups and self.rows[u].status in StepStatus.DONE}

    def run(self) -> None:
        while True:
            if self.store.cancel_requested(self.run_id):
                self.cancel()
                return
            self.propagate_not_run()
            self.launch_ready()
            if not self.running and not self.next_at:
                return
            self.collect()
            self.heartbeat()

    def propagate_not_run(self) -> None:
        bad = {StepStatus.FAILED, StepStatus.NOT_RUN, StepStatus.CANCELLED}
        for sid in self.order:
            if self.status(sid) == StepStatus.PENDING and any(self.status(n) in bad for n in self.wf.step(sid).needs):
                upstream = next(n for n in self.wf.step(sid).needs if self.status(n) in bad)
                self.set(sid, status=StepStatus.NOT_RUN, error=f"upstream step {upstream!r} {self.status(upstream)}")
                self.log(f"{sid}: not run ({upstream} {self.status(upstream)})")

    def launch_ready(self) -> None:
        now = time.time()
        for sid in self.order:
            step = self.wf.step(sid)
            if self.status(sid) != StepStatus.PENDING or sid in self.running.values():
                continue
            if not all(self.status(n) in StepStatus.DONE for n in step.needs) or self.next_at.get(sid, 0) > now:
                continue
            self.next_at.pop(sid, None)
            if self.attempts[sid] == 0 and self.try_cache(sid):
                continue
            self.launch(sid)

    def try_cache(self, sid: str) -> bool:
        key = self.keys[sid]
        for hit in self.store.find_cached(key):
            if outputs_exist(hit.outputs_dict):
                now = time.time()
                self.set(sid, status=StepStatus.CACHED, cache_key=key, outputs=hit.outputs_dict, started_at=now,
                         finished_at=now, mlflow_run_id=hit.mlflow_run_id, error=None)
                self.log(f"{sid}: cached (from run {hit.run_id})")
                return True
        return False

    def launch(self, sid: str) -> None:
        step = self.wf.step(sid)
        try:
            run_fn = step.kind.run_fn()
        except Exception as exc:  # noqa: BLE001 — a broken step module fails the step, not the driver
            self.attempts[sid] = step.retries + 1
            self.on_failure(sid, RuntimeFailure(f"cannot load the {step.uses!r} step: {type(exc).__name__}: {exc}"))
            return
        self.attempts[sid] += 1
        attempt = self.attempts[sid]
        workdir = run_dir(self.run_id) / sid
        child = self.rows[sid].mlflow_run_id or self.call_lineage("start_step", step, self.keys[sid])
        ctx = StepContext(
            run_id=self.run_id, step_id=sid, kind=step.uses, workflow=self.wf.name, workdir=str(workdir),
            defaults=self.wf.defaults.model_dump(mode="json", exclude_none=True), inputs=self.inputs_for(sid),
            attempt=attempt, mlflow_run_id=child, tags=self.call_lineage("step_tags", step) or {},
            env=_forward_env(), log_path=str(workdir / "step.log"))
        workdir.mkdir(parents=True, exist_ok=True)
        options = {**step.ray_resources(), "max_retries": 0, "name": f"{self.wf.name}.{sid}"}
        ref = self.remote.options(**options).remote(run_fn, step.with_, ctx)
        self.running[ref] = sid
        self.set(sid, status=StepStatus.RUNNING, attempts=self.rows[sid].attempts + 1, cache_key=self.keys[sid],
                 started_at=time.time(), finished_at=None, log_path=ctx.log_path, mlflow_run_id=child)
        self.log(f"{sid}: running ({step.uses}, attempt {attempt}/{step.retries + 1})")

    def collect(self) -> None:
        import ray

        if not self.running:
            time.sleep(POLL_S)
            return
        done, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_S)
        for ref in done:
            sid = self.running.pop(ref)
            try:
                outputs = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 — any step failure is recorded, not raised
                self.on_failure(sid, exc)
            else:
                self.on_success(sid, outputs)

    def on_success(self, sid: str, outputs: dict) -> None:
        step = self.wf.step(sid)
        self.set(sid, status=StepStatus.SUCCEEDED, outputs=outputs, finished_at=time.time(), error=None)
        self.log(f"{sid}: succeeded in {self.rows[sid].duration_s:.1f} s")
        self.call_lineage("step_succeeded", step, self.rows[sid].mlflow_run_id, outputs, self.inputs_for(sid))

    def on_failure(self, sid: str, exc: BaseException) -> None:
        step = self.wf.step(sid)
        text, retriable = _error_text(exc)
        if retriable and self.attempts[sid] <= step.retries:
            delay = step.retry_delay_s * 2 ** (self.attempts[sid] - 1)
            self.next_at[sid] = time.time() + delay
            self.set(sid, status=StepStatus.PENDING, error=text, next_attempt_at=self.next_at[sid])
            self.log(f"{sid}: attempt {self.attempts[sid]} failed ({text}); retrying in {delay:.1f} s")
            return
        self.set(sid, status=StepStatus.FAILED, error=text, finished_at=time.time())
        self.log(f"{sid}: FAILED: {text}")
        self.call_lineage("step_failed", step, self.rows[sid].mlflow_run_id, text)

    def cancel(self) -> None:
        import ray

        for ref, sid in list(self.running.items()):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True, recursive=True)
            self.set(sid, status=StepStatus.CANCELLED, finished_at=time.time(), error="cancelled")
            self.call_lineage("step_failed", self.wf.step(sid), self.rows[sid].mlflow_run_id, "cancelled")
        self.running.clear()
        for sid in self.order:
            if self.status(sid) == StepStatus.PENDING:
                self.set(sid, status=StepStatus.CANCELLED, error="cancelled")
        self.log("run cancelled")

    def heartbeat(self) -> None:
        if time.time() - self.last_beat > HEARTBEAT_S:
            self.last_beat = time.time()
            self.store.update_run(self.run_id, heartbeat_at=self.last_beat)

    def call_lineage(self, method: str, *args: Any) -> Any:
        if self.lineage is None:
            return None
        try:
            return getattr(self.lineage, method)(*args)
        except Exception as exc:  # noqa: BLE001 — tracking problems never fail a step
            self.log(f"warning: MLflow lineage ({method}) failed: {type(exc).__name__}: {exc}")
            return None

    def final_status(self) -> tuple[str, str | None]:
        statuses = {sid: self.status(sid) for sid in self.order}
        failed = [sid for sid, st in statuses.items() if st == StepStatus.FAILED]
        if failed:
            return RunStatus.FAILED, f"step {failed[0]!r} failed: {self.rows[failed[0]].error}"
        if StepStatus.CANCELLED in statuses.values():
            return RunStatus.CANCELLED, "cancelled"
        return RunStatus.SUCCEEDED, None


def _forward_env() -> dict[str, str]:
    names = ("DETFLOW_HOME", "DETFLOW_STATE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
             "MLFLOW_DISABLE_TELEMETRY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION")
    env = {k: os.environ[k] for k in names if k in os.environ}
    env.setdefault("DETFLOW_HOME", str(state_dir()))
    return env


def _printer(run_id: str, quiet: bool) -> Callable[[str], None]:
    log_path = run_dir(run_id) / "driver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        line = f"[{_dt.datetime.now():%H:%M:%S}] {msg}"
        with open(log_path, "a") as f:
            f.write(line + "\n")
        if not quiet:
            print(line, flush=True)

    return log


def _make_lineage(wf: Workflow, run_id: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from .lineage import Lineage

    return Lineage(wf, run_id)


def _drive(wf: Workflow, run_id: str, store: StateStore, *, address: str | None, lineage: bool,
           quiet: bool, num_cpus: int | None) -> RunResult:
    log = _printer(run_id, quiet)
    store.claim_driver(run_id)
    store.update_run(run_id, status=RunStatus.RUNNING, started_at=time.time(), finished_at=None, error=None)
    tracker = _make_lineage(wf, run_id, lineage)
    parent = store.get_run(run_id).mlflow_run_id
    if tracker is not None:
        try:
            parent = tracker.start_workflow(parent)
            store.update_run(run_id, mlflow_run_id=parent)
        except Exception as exc:  # noqa: BLE001
            log(f"warning: MLflow unavailable, running without lineage: {exc}")
            tracker = None
    log(f"run {run_id}: {len(wf.steps)} steps")
    with ray_session(address, num_cpus):
        driver = _Driver(wf, run_id, store, tracker, log)
        try:
            driver.run()
        except BaseException:
            driver.cancel()
            store.update_run(run_id, status=RunStatus.FAILED, finished_at=time.time(), error="driver interrupted")
            raise
    status, error = driver.final_status()
    store.update_run(run_id, status=status, error=error, finished_at=time.time())
    driver.call_lineage("finish", status, RunResult.from_store(store, run_id))
    log(f"run {run_id}: {status}" + (f" — {error}" if error else ""))
    return RunResult.from_store(store, run_id)


def run_workflow(wf: Workflow, *, run_id: str | None = None, state_url: str | None = None,
                 address: str | None = None, lineage: bool = True, quiet: bool = False,
                 source: str | None = None, num_cpus: int | None = None) -> RunResult:
    """Run ``wf`` to completion in this process (the driver); returns the :class:`RunResult`.

    Example::

        from detflow.workflows.lint import load_workflow
        result = run_workflow(load_workflow("workflows/quickstart.yaml"))
        print(result.status, result.outputs("bench")["table_md"])
    """
    store = StateStore(state_url)
    run_id = run_id or new_run_id(wf.name)
    existing = store.get_run(run_id)
    if existing is None:
        store.create_run(run_id, wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps], source=source,
                         address=address)
    elif existing.status != RunStatus.PENDING:
        raise UserInputError(f"run {run_id!r} already exists ({existing.status}); use `detflow resume {run_id}`")
    return _drive(wf, run_id, store, address=address, lineage=lineage, quiet=quiet, num_cpus=num_cpus)


def resume_workflow(run_id: str, *, state_url: str | None = None, address: str | None = None,
                    lineage: bool = True, quiet: bool = False, num_cpus: int | None = None) -> RunResult:
    """Continue run ``run_id``: succeeded/cached steps are kept, every other step runs again."""
    from .lint import parse_workflow

    store = StateStore(state_url)
    run = store.get_run(run_id)
    if run is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    if run.status == RunStatus.SUCCEEDED:
        return RunResult.from_store(store, run_id)
    _refuse_live_driver(run)
    wf = parse_workflow(run.spec_dict, f"run {run_id}")
    for row in store.steps(run_id):
        if row.status not in StepStatus.DONE:
            store.update_step(run_id, row.step_id, status=StepStatus.PENDING, error=None, finished_at=None)
    store.update_run(run_id, cancel_requested=0)
    return _drive(wf, run_id, store, address=address, lineage=lineage, quiet=quiet, num_cpus=num_cpus)


def driver_lost(run: Any) -> bool:
    """True when a run says ``running`` but its driver process is gone (killed, host lost)."""
    return run.status == RunStatus.RUNNING and not _driver_alive(run)


def _driver_alive(run: Any) -> bool:
    import socket

    if run.status not in (RunStatus.RUNNING,) or not run.driver_pid:
        return False
    if run.driver_host == socket.gethostname():
        try:
            os.kill(run.driver_pid, 0)
        except OSError:
            return False
        return run.driver_pid != os.getpid()
    return run.heartbeat_at is not None and time.time() - run.heartbeat_at < 6 * HEARTBEAT_S


def _refuse_live_driver(run: Any) -> None:
    if _driver_alive(run):
        raise UserInputError(f"run {run.id!r} is still running (driver pid {run.driver_pid} on {run.driver_host}); "
                             f"cancel it first with `detflow cancel {run.id}`")


def cancel_run(run_id: str, *, state_url: str | None = None, wait_s: float = 30.0) -> str:
    """Ask the driver of ``run_id`` to cancel; mark the run cancelled directly when no driver is alive.
    Returns the run's status afterwards."""
    store = StateStore(state_url)
    run = store.get_run(run_id)
    if run is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    if run.status in RunStatus.FINAL:
        return run.status
    store.request_cancel(run_id)
    if run.job_id and run.address:
        with contextlib.suppress(Exception):
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(run.address).stop_job(run.job_id)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        run = store.get_run(run_id)
        if run.status in RunStatus.FINAL:
            return run.status
        if run.status == RunStatus.PENDING or not _driver_alive(run):
            break
        time.sleep(0.5)
    for row in store.steps(run_id):
        if row.status not in StepStatus.FINAL:
            store.update_step(run_id, row.step_id, status=StepStatus.CANCELLED, error="cancelled",
                              finished_at=time.time() if row.started_at else None)
    store.update_run(run_id, status=RunStatus.CANCELLED, error="cancelled", finished_at=time.time())
    return RunStatus.CANCELLED
