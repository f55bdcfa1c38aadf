"""The workflow driver: runs a validated DAG on Ray with durable state, caching, retries and cancel.

Each ready step (all ``needs`` succeeded or cached) is first looked up in the cache (same key,
artifacts still present); otherwise it runs as a Ray task with the step's resources. Independent
steps run in parallel. A failed attempt is retried ``retries`` times with exponential backoff; a
step that still fails marks its descendants ``not_run`` and the run ``failed`` (independent branches
finish). Each step stores its outputs under ``<storage>/<run_id>/<step_id>/`` (:mod:`.execute`), so a
step may run on any node. The driver holds the run's lease (:mod:`.lease`) and fences every state
update with its token. ``detflow cancel`` sets a flag the driver polls: running tasks are cancelled
(forced) and pending steps marked ``cancelled``. ``resume`` re-drives a run: finished steps are kept,
the rest run again (a training step finds its own checkpoints in its step's storage).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import artifact_store
from ..errors import RuntimeFailure, UserInputError
from ..paths import state_dir
from .cache import outputs_exist, step_keys, topological_order
from .context import StepContext
from .execute import execute_step
from .lease import DriverLease, LeaseHeld, LeaseInfo, LeaseLost
from .schema import Workflow
from .state import RunStatus, StateStore, StepStatus

__all__ = ["workflow_storage", "run_workflow", "resume_workflow", "new_run_id", "RunResult", "run_dir", "ray_session", "cancel_run",
           "driver_lost", "CANCEL_REQUESTED"]

POLL_S = 0.5
CANCEL_REQUESTED = "cancel requested"  # cancel_run: the run's live driver was asked to cancel and has not yet


def new_run_id(workflow: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{workflow[:40]}-{stamp}-{secrets.token_hex(2)}"


def run_dir(run_id: str) -> Path:
    """The driver's local directory of a run (its ``driver.log``)."""
    return state_dir() / "workflows" / run_id


def workflow_storage(wf: Workflow) -> str:
    """Where the run's steps store their outputs (``<this>/<run_id>/<step_id>/``): ``defaults.storage``,
    else ``$DETFLOW_HOME/workflows`` of the driver (one machine, or a shared filesystem mounted there)."""
    return wf.defaults.storage or str(state_dir() / "workflows")


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


def _error_text(exc: BaseException) -> tuple[str, bool]:
    """(one-line error, retriable?) — bad user input is not retried."""
    cause = getattr(exc, "cause", None) or exc
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()] or [""]
    # Ray's own errors (OOM kill, worker crash) lead with the reason; Python errors end with it
    line = lines[0] if type(cause).__module__.startswith("ray") else lines[-1]
    return f"{type(cause).__name__}: {line}"[:1000], not isinstance(cause, UserInputError)


# -------------------------------------------------------------------------------------- driver
class _Driver:
    """Drives one run. Ray is started (``start_ray``) only when a step is launched, so a run whose
    steps are all cached neither imports nor starts Ray; without ``start_ray`` Ray must be initialised."""

    def __init__(self, wf: Workflow, run_id: str, store: StateStore, lineage: Any, log: Callable[[str], None],
                 start_ray: Callable[[], None] | None = None):
        self.wf, self.run_id, self.store, self.lineage, self.log = wf, run_id, store, lineage, log
        self.keys = step_keys(wf)
        self.order = topological_order(wf)
        self.rows = {s.step_id: s for s in store.steps(run_id)}
        self.running: dict[Any, str] = {}
        self.next_at: dict[str, float] = {}
        # attempts so far, as stored: a resumed run goes on counting (retries are bounded across resumes)
        self.attempts: dict[str, int] = {sid: self.rows[sid].attempts or 0 for sid in self.order}
        self.storage_root = workflow_storage(wf)
        self.start_ray = start_ray
        self.remote: Any = None  # ray.remote(execute_step), made on the first launch

    def remote_step(self) -> Any:
        """The Ray task that runs a step, starting Ray (once) on the first call."""
        if self.remote is None:
            if self.start_ray is not None:
                self.start_ray()
            import ray

            self.remote = ray.remote(execute_step)
        return self.remote

    # state helpers
    def status(self, sid: str) -> str:
        return self.rows[sid].status

    def set(self, sid: str, **fields: Any) -> None:
        """Update a step's row, fenced by the driver's lease token (LeaseLost once it was taken over)."""
        lease = getattr(self, "lease", None)
        self.store.update_step(self.run_id, sid, token=lease.token if lease else None, **fields)
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
        """Launch ready steps and collect finished ones until none is left; checks the lease before each round."""
        while True:
            self.heartbeat()
            if self.store.cancel_requested(self.run_id):
                self.cancel()
                return
            self.propagate_not_run()
            self.launch_ready()
            if not self.running and not self.next_at:
                return
            self.collect()

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
            run_fn = step.kind.run
        except Exception as exc:  # noqa: BLE001 — a broken step module fails the step, not the driver
            self.attempts[sid] = step.retries + 1
            self.on_failure(sid, RuntimeFailure(f"cannot load the {step.uses!r} step: {type(exc).__name__}: {exc}"))
            return
        self.attempts[sid] += 1
        attempt = self.attempts[sid]
        child = self.rows[sid].mlflow_run_id or self.call_lineage("start_step", step, self.keys[sid])
        ctx = StepContext(
            run_id=self.run_id, step_id=sid, kind=step.uses, workflow=self.wf.name,
            storage=artifact_store.join(self.storage_root, self.run_id, sid),
            defaults=self.wf.defaults.model_dump(mode="json", exclude_unset=True, exclude_none=True),
            inputs=self.inputs_for(sid),
            attempt=attempt, mlflow_run_id=child, tags=self.call_lineage("step_tags", step) or {},
            env=_forward_env())
        options = {**step.ray_resources(), "max_retries": 0, "name": f"{self.wf.name}.{sid}"}
        ref = self.remote_step().options(**options).remote(run_fn, step.with_, ctx)
        self.running[ref] = sid
        self.set(sid, status=StepStatus.RUNNING, attempts=attempt, cache_key=self.keys[sid],
                 started_at=time.time(), finished_at=None, log_path=ctx.log_uri, mlflow_run_id=child)
        self.log(f"{sid}: running ({step.uses}, attempt {attempt}/{step.retries + 1})")

    def collect(self) -> None:
        if not self.running:
            time.sleep(POLL_S)
            return
        import ray

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
        from .retry import RetryPolicy

        step = self.wf.step(sid)
        text, _ = _error_text(exc)
        policy = RetryPolicy.of(step)  # retry_errors, never bad input; the count includes earlier drivers'
        if policy.should_retry(exc, self.attempts[sid]):
            delay = policy.delay(self.attempts[sid])
            self.next_at[sid] = time.time() + delay
            self.set(sid, status=StepStatus.PENDING, error=text, next_attempt_at=self.next_at[sid])
            self.log(f"{sid}: attempt {self.attempts[sid]} failed ({text}); retrying in {delay:.1f} s")
            return
        self.set(sid, status=StepStatus.FAILED, error=text, finished_at=time.time())
        self.log(f"{sid}: FAILED: {text}")
        self.call_lineage("step_failed", step, self.rows[sid].mlflow_run_id, text)

    def cancel(self, reason: str = "cancelled", record: bool = True) -> None:
        """Stop the running Ray tasks (forced). With ``record``, running and pending steps become
        ``cancelled`` (error ``reason``) and the running steps' MLflow runs end KILLED; without it (the
        lease was lost: the run belongs to another driver) nothing is written."""
        for ref, sid in list(self.running.items()):
            import ray

            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True, recursive=True)
            if record:
                self.set(sid, status=StepStatus.CANCELLED, finished_at=time.time(), error=reason)
                self.call_lineage("step_failed", self.wf.step(sid), self.rows[sid].mlflow_run_id, "cancelled")
        self.running.clear()
        if not record:
            return
        for sid in self.order:
            if self.status(sid) == StepStatus.PENDING:
                self.set(sid, status=StepStatus.CANCELLED, error=reason)
        self.log(f"run {reason}")

    def heartbeat(self) -> None:
        """Raise LeaseLost once the driver's lease was lost; the lease's thread renews it (and ``heartbeat_at``)."""
        lease = getattr(self, "lease", None)
        if lease is not None:
            lease.check()

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
    """The driver's settings a step task may fill in where its node has none (``StepContext.env``):
    :func:`detflow.storage.public_env` — no credentials, URLs without passwords, no ``DETFLOW_HOME``
    (each node uses its own); the node's own values win (``StepContext.apply_env``)."""
    from ..storage import public_env

    return public_env()


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


def _drive(wf: Workflow, run_id: str, store: StateStore, lease: DriverLease, *, address: str | None,
           lineage: bool, quiet: bool, num_cpus: int | None) -> RunResult:
    """Drive ``run_id`` while holding ``lease`` (the caller releases it); every state update is fenced
    by its token. Ctrl-C, SIGTERM or SIGHUP (a KeyboardInterrupt) leave the run ``interrupted`` and
    resumable; a lost lease stops the driver without writing (the run belongs to its new driver)."""
    log = _printer(run_id, quiet)
    token = lease.token
    store.claim_driver(run_id, token)
    store.update_run(run_id, token=token, status=RunStatus.RUNNING, started_at=time.time(), finished_at=None,
                     error=None)
    tracker = _make_lineage(wf, run_id, lineage)
    parent = store.get_run(run_id).mlflow_run_id
    if tracker is not None:
        try:
            parent = tracker.start_workflow(parent)
            store.update_run(run_id, token=token, mlflow_run_id=parent)
        except LeaseLost:
            raise
        except Exception as exc:  # noqa: BLE001
            log(f"warning: MLflow unavailable, running without lineage: {exc}")
            tracker = None
    log(f"run {run_id}: {len(wf.steps)} steps")
    try:
        with contextlib.ExitStack() as stack:  # Ray starts on the first step that runs (none: no Ray)
            driver = _Driver(wf, run_id, store, tracker, log,
                             start_ray=lambda: stack.enter_context(ray_session(address, num_cpus)))
            driver.lease = lease
            try:
                driver.run()
            except BaseException as exc:
                driver.cancel("interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled",
                              record=not isinstance(exc, LeaseLost))
                raise
            status, error = driver.final_status()
            store.update_run(run_id, token=token, status=status, error=error, finished_at=time.time(),
                             cancel_requested=0)
            driver.call_lineage("finish", status, RunResult.from_store(store, run_id))
    except BaseException as exc:
        _record_stop(store, run_id, token, tracker, log, exc)
        raise
    log(f"run {run_id}: {status}" + (f" — {error}" if error else ""))
    return RunResult.from_store(store, run_id)


def _record_stop(store: StateStore, run_id: str, token: int, tracker: Any, log: Callable[[str], None],
                 exc: BaseException) -> None:
    """Record why the driver stopped early: ``interrupted`` (resumable, MLflow parent run KILLED) on a
    KeyboardInterrupt, ``failed`` on a driver error, nothing when the lease was lost. Never raises."""
    if isinstance(exc, LeaseLost):
        log(f"run {run_id}: {exc}")
        return
    interrupted = isinstance(exc, KeyboardInterrupt)
    status = RunStatus.INTERRUPTED if interrupted else RunStatus.FAILED
    error = (f"interrupted; continue it with `detflow resume {run_id}`" if interrupted
             else f"driver failed: {type(exc).__name__}: {exc}"[:1000])
    try:
        store.update_run(run_id, token=token, status=status, error=error, finished_at=time.time(),
                         cancel_requested=0)
        if tracker is not None and tracker.parent:
            tracker.finish(status, RunResult.from_store(store, run_id))
    except Exception as err:  # noqa: BLE001 — the original exception matters more
        log(f"warning: could not record that run {run_id} stopped ({status}): {type(err).__name__}: {err}")
    log(f"run {run_id}: {status} — {error}")


def run_workflow(wf: Workflow, *, run_id: str | None = None, state_url: str | None = None,
                 address: str | None = None, lineage: bool = True, quiet: bool = False,
                 source: str | None = None, num_cpus: int | None = None) -> RunResult:
    """Run ``wf`` to completion in this process (the driver); returns the :class:`RunResult`.

    Example::

        from detflow.workflows.lint import load_workflow
        result = run_workflow(load_workflow("workflows/quickstart.yaml"))
        print(result.status, result.outputs("bench")["table_md"])
    """
    if run_id is not None:  # --run-id / SDK run_id: a directory name and a 64-character DB key
        from ..paths import check_run_id
        check_run_id(run_id)
    _check_storage(wf)
    store = StateStore(state_url)
    run_id = run_id or new_run_id(wf.name)
    existing = store.get_run(run_id)
    if existing is None:
        store.create_run(run_id, wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps], source=source,
                         address=address)
    elif existing.status != RunStatus.PENDING:
        raise UserInputError(f"run {run_id!r} already exists ({existing.status}); use `detflow resume {run_id}`")
    with DriverLease.acquire(store.engine, run_id) as lease:
        status = store.get_run(run_id).status
        if status != RunStatus.PENDING:  # cancelled (or driven) while this driver was starting
            raise UserInputError(f"run {run_id!r} is {status}, not pending; use `detflow resume {run_id}`")
        return _drive(wf, run_id, store, lease, address=address, lineage=lineage, quiet=quiet, num_cpus=num_cpus)


def _check_storage(wf: Workflow) -> None:
    """Refuse, before any row is written, an object store the run could not write to (no bucket)."""
    if wf.defaults.storage is None:
        return
    problem = artifact_store.check_reachable(wf.defaults.storage)
    if problem:
        from ..storage import redact

        raise UserInputError(f"workflow {wf.name!r}: defaults.storage: {redact(wf.defaults.storage)!r}: {problem}")


def resume_workflow(run_id: str, *, state_url: str | None = None, address: str | None = None,
                    lineage: bool = True, quiet: bool = False, num_cpus: int | None = None) -> RunResult:
    """Continue run ``run_id``: succeeded/cached steps are kept, every other step runs again.

    Takes the run's lease first: while another driver's lease is live this raises
    :class:`~detflow.workflows.lease.LeaseHeld` (exit 2) naming it; cancel requests made before are void."""
    from .lint import parse_workflow

    store = StateStore(state_url)
    run = store.get_run(run_id)
    if run is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    if run.status == RunStatus.SUCCEEDED:
        return RunResult.from_store(store, run_id)
    with DriverLease.acquire(store.engine, run_id, clear_cancel=True) as lease:
        run = store.get_run(run_id)
        if run.status == RunStatus.SUCCEEDED:  # its previous driver finished it meanwhile
            return RunResult.from_store(store, run_id)
        wf = parse_workflow(run.spec_dict, f"run {run_id}")
        for row in store.steps(run_id):
            if row.status not in StepStatus.DONE:
                store.update_step(run_id, row.step_id, token=lease.token, status=StepStatus.PENDING, error=None,
                                  finished_at=None)
        return _drive(wf, run_id, store, lease, address=address, lineage=lineage, quiet=quiet, num_cpus=num_cpus)


def driver_lost(run: Any) -> bool:
    """True when a run says ``running`` but no driver holds a live lease on it (killed, host lost)."""
    return run.status == RunStatus.RUNNING and not _driver_alive(run)


def _driver_alive(run: Any) -> bool:
    """Whether some driver holds a live (unexpired) lease on ``run`` (a ``WorkflowRun`` row)."""
    return LeaseInfo.of(run).live()


def cancel_run(run_id: str, *, state_url: str | None = None, wait_s: float = 30.0) -> str:
    """Cancel ``run_id``; returns its status afterwards, or :data:`CANCEL_REQUESTED`.

    A run whose driver holds a live lease is asked to cancel, and waited for up to ``wait_s``; if the
    lease is still live then, the run is left to its driver (which cancels it when it next polls) and
    ``"cancel requested"`` is returned. Only a run without a live lease is marked cancelled here,
    after taking its lease, so that no ``resume`` can start driving it in between; its MLflow runs
    (parent, steps and the runs nested under them) are then ended KILLED."""
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
    while _driver_alive(run) and time.time() < deadline:
        time.sleep(0.5)
        run = store.get_run(run_id)
        if run.status in RunStatus.FINAL:
            return run.status
    if _driver_alive(run):
        return CANCEL_REQUESTED
    return _finalise_cancel(store, run_id)


def _finalise_cancel(store: StateStore, run_id: str) -> str:
    """Mark a run without a live driver cancelled, holding its lease while doing so; returns the run's
    status, or :data:`CANCEL_REQUESTED` when a driver took the lease first (it sees the request)."""
    try:
        lease = DriverLease.acquire(store.engine, run_id, heartbeat=False)
    except LeaseHeld:
        return CANCEL_REQUESTED
    with lease:
        run = store.get_run(run_id)
        if run.status in RunStatus.FINAL:
            return run.status
        for row in store.steps(run_id):
            if row.status not in StepStatus.FINAL:
                store.update_step(run_id, row.step_id, token=lease.token, status=StepStatus.CANCELLED,
                                  error="cancelled", finished_at=time.time() if row.started_at else None)
        store.update_run(run_id, token=lease.token, status=RunStatus.CANCELLED, error="cancelled",
                         finished_at=time.time(), cancel_requested=0)
    _end_tracking(store, run_id)
    return RunStatus.CANCELLED


def _end_tracking(store: StateStore, run_id: str) -> list[str]:
    """End the MLflow runs a dead driver left open (the run's parent, its steps' runs and the runs
    nested under them, in any experiment) as KILLED, deepest first; returns their ids. A tracking
    problem is printed, never raised: the run is cancelled in the state DB either way."""
    run = store.get_run(run_id)
    ids = [i for i in [run.mlflow_run_id] + [row.mlflow_run_id for row in store.steps(run_id)] if i]
    if not ids:
        return []
    try:
        return _kill_open_runs(ids)
    except Exception as exc:  # noqa: BLE001
        from ..redact import redact_text

        print(f"warning: run {run_id} is cancelled, but its MLflow runs could not be ended: "
              f"{redact_text(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return []


_OPEN = ("RUNNING", "SCHEDULED")
_MAX_NESTING = 8  # workflow → step → sweep → trial → …: deeper than detflow nests


def _kill_open_runs(run_ids: list[str]) -> list[str]:
    """KILLED for every run of ``run_ids`` and of their descendants still open; returns the ids ended."""
    from ..tracking import Run, search_runs

    tree: dict[str, tuple[int, Any]] = {}
    frontier = [(Run(rid), 0) for rid in dict.fromkeys(run_ids)]
    while frontier:
        node, depth = frontier.pop()
        if node.run_id in tree or depth > _MAX_NESTING:
            continue
        tree[node.run_id] = (depth, node)
        frontier += [(child, depth + 1) for child in search_runs(f"tags.`mlflow.parentRunId` = '{node.run_id}'")]
    ended = []
    for _, node in sorted(tree.values(), key=lambda item: -item[0]):  # children before their parent
        if node.status in _OPEN:
            node.set_tags({"detflow.status": RunStatus.CANCELLED})
            node.end("KILLED")
            ended.append(node.run_id)
    return ended
