"""Workflow SDK: the same operations as ``detflow run / submit / status / resume / cancel / logs``.

Example::

    import detflow
    result = detflow.run("workflows/quickstart.yaml")          # runs here, on a local Ray
    print(result.status, result.outputs("bench")["table_md"])
    run_id = detflow.submit("workflows/rtmdet.yaml", address="http://head:8265")   # returns at once
    detflow.status(run_id).steps["train"]["status"]
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import yaml

from .errors import UserInputError
from .workflows.engine import RunResult, cancel_run, driver_lost, new_run_id, resume_workflow, run_dir, run_workflow
from .workflows.lint import load_workflow
from .workflows.schema import Workflow
from .workflows.state import RunStatus, StateStore

__all__ = ["run", "submit", "status", "resume", "cancel", "logs", "plan", "list_runs"]


def _load(workflow: str | os.PathLike | Workflow, overrides: Iterable[str]) -> tuple[Workflow, str | None]:
    if isinstance(workflow, Workflow):
        if list(overrides):
            raise UserInputError("overrides apply to a workflow file; edit the Workflow object instead")
        return workflow, None
    return load_workflow(workflow, overrides), str(Path(workflow).resolve())


def run(workflow: str | os.PathLike | Workflow, *, overrides: Iterable[str] = (), address: str | None = None,
        state_url: str | None = None, run_id: str | None = None, lineage: bool = True, quiet: bool = False) -> RunResult:
    """Validate and run a workflow to completion in this process; returns the :class:`RunResult`."""
    overrides = list(overrides)
    wf, source = _load(workflow, overrides)
    return run_workflow(wf, run_id=run_id, state_url=state_url, address=address, lineage=lineage, quiet=quiet,
                        source=source)


def plan(workflow: str | os.PathLike | Workflow, *, overrides: Iterable[str] = (),
         state_url: str | None = None) -> list[dict]:
    """The resolved DAG in run order with each step's cache key and cache status (``hit`` / ``miss``)."""
    from .workflows.cache import outputs_exist, step_keys, topological_order

    wf, _ = _load(workflow, list(overrides))
    store = StateStore(state_url)
    keys = step_keys(wf)
    rows = []
    for sid in topological_order(wf):
        step = wf.step(sid)
        hit = next((h for h in store.find_cached(keys[sid]) if outputs_exist(h.outputs_dict)), None)
        rows.append({"step": sid, "kind": step.uses, "needs": list(step.needs), "cache_key": keys[sid],
                     "cache": f"hit (run {hit.run_id})" if hit else "miss", "resources": step.ray_resources(),
                     "retries": step.retries, "with": step.with_.model_dump(mode="json", exclude_unset=True)})
    return rows


def submit(workflow: str | os.PathLike, *, address: str, overrides: Iterable[str] = (), state_url: str | None = None,
           run_id: str | None = None, lineage: bool = True) -> str:
    """Validate here, then run the driver on a Ray cluster as a Ray Job; returns the run id at once.

    The job runs ``python -m detflow run workflow.yaml --run-id RUN_ID`` with this interpreter's
    absolute path and the resolved workflow uploaded as its working directory.
    """
    from .workflows.engine import _forward_env

    wf, source = _load(workflow, list(overrides))
    store = StateStore(state_url)
    run_id = run_id or new_run_id(wf.name)
    store.create_run(run_id, wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps], source=source, address=address)
    job_dir = Path(tempfile.mkdtemp(prefix="detflow-submit-"))
    (job_dir / "workflow.yaml").write_text(yaml.safe_dump(wf.to_dict(), sort_keys=False))
    entry = f"{shlex.quote(sys.executable)} -m detflow run workflow.yaml --run-id {run_id}"
    if not lineage:
        entry += " --no-lineage"
    env = {**_forward_env(), "DETFLOW_STATE_URL": store.url}
    try:
        job_id = _submit_job(address, entry, run_id, {"working_dir": str(job_dir), "env_vars": env})
    except Exception as exc:
        store.update_run(run_id, status=RunStatus.FAILED, error=f"submit failed: {exc}")
        from .errors import RuntimeFailure

        raise RuntimeFailure(f"could not submit to the Ray job server at {address}: {exc}") from exc
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)  # uploaded to the cluster by now
    store.update_run(run_id, job_id=job_id)
    return run_id


def _submit_job(address: str, entrypoint: str, run_id: str, runtime_env: dict, wait_s: float = 90.0) -> str:
    """Submit, retrying while a freshly started head has no job agent yet."""
    import time

    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + wait_s
    while True:
        try:
            client = JobSubmissionClient(address)
            return client.submit_job(entrypoint=entrypoint, submission_id=run_id, runtime_env=runtime_env)
        except Exception as exc:  # noqa: BLE001
            transient = "No available agent" in str(exc) or "try again" in str(exc)
            if not transient or time.time() > deadline:
                raise
            time.sleep(2.0)


def status(run_id: str | None = None, *, state_url: str | None = None) -> RunResult:
    """The state of run ``run_id`` (default: the latest run)."""
    store = StateStore(state_url)
    run_obj = store.get_run(run_id) if run_id else store.latest_run()
    if run_obj is None:
        raise UserInputError(f"no workflow run {run_id!r}" if run_id else "no workflow runs yet; start one with `detflow run WF.yaml`")
    if run_obj.job_id and run_obj.status in (RunStatus.PENDING, RunStatus.RUNNING):
        _sync_job(store, run_obj)
        run_obj = store.get_run(run_obj.id)
    result = RunResult.from_store(store, run_obj.id)
    if driver_lost(run_obj) and not run_obj.job_id:
        result.error = (f"the driver (pid {run_obj.driver_pid} on {run_obj.driver_host}) is gone; continue the run "
                        f"with `detflow resume {run_obj.id}`")
    return result


def _sync_job(store: StateStore, run_obj) -> None:  # noqa: ANN001
    """A submitted run whose Ray Job ended without its driver recording an outcome (it crashed on
    start, was stopped, the node died) is marked failed with the job's last log line."""
    import time

    try:
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(run_obj.address)
        job_status = client.get_job_status(run_obj.job_id)
        if job_status not in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.SUCCEEDED):
            return
        lines = [ln for ln in client.get_job_logs(run_obj.job_id).splitlines() if ln.strip()]
    except Exception:  # noqa: BLE001 — the job server may be gone; keep the stored state
        return
    run_obj = store.get_run(run_obj.id)
    if run_obj.status in RunStatus.FINAL:
        return
    detail = lines[-1] if lines else "no output"
    store.update_run(run_obj.id, status=RunStatus.FAILED, finished_at=time.time(),
                     error=f"Ray job {run_obj.job_id} {job_status.value.lower()}: {detail}; full log: "
                           f"`ray job logs {run_obj.job_id} --address {run_obj.address}`")


def list_runs(limit: int = 20, *, state_url: str | None = None) -> list[dict]:
    """Recent runs, newest first: ``{run_id, workflow, status, created_at, error}``."""
    return [{"run_id": r.id, "workflow": r.workflow, "status": r.status, "created_at": r.created_at, "error": r.error}
            for r in StateStore(state_url).list_runs(limit)]


def resume(run_id: str, *, address: str | None = None, state_url: str | None = None, lineage: bool = True,
           quiet: bool = False) -> RunResult:
    """Continue a failed, cancelled or interrupted run; finished steps are not run again."""
    return resume_workflow(run_id, state_url=state_url, address=address, lineage=lineage, quiet=quiet)


def cancel(run_id: str, *, state_url: str | None = None) -> str:
    """Stop a run's running steps; returns the resulting run status."""
    return cancel_run(run_id, state_url=state_url)


def logs(run_id: str, step: str | None = None, *, state_url: str | None = None) -> str:
    """The driver log of a run, or one step's log (all attempts)."""
    store = StateStore(state_url)
    if store.get_run(run_id) is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    if step is None:
        path = run_dir(run_id) / "driver.log"
    else:
        row = store.step(run_id, step)
        if row is None:
            names = ", ".join(s.step_id for s in store.steps(run_id))
            raise UserInputError(f"run {run_id!r} has no step {step!r}; steps: {names}")
        path = Path(row.log_path) if row.log_path else run_dir(run_id) / step / "step.log"
    return path.read_text() if path.is_file() else ""
