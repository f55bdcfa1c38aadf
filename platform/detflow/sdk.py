"""The Python SDK, one module: the same operations as ``detflow run / submit / status / resume /
cancel / logs / sweep / nas / compare / config validate``; ``import detflow`` re-exports them.

Example::

    import detflow
    result = detflow.run("workflows/quickstart.yaml")          # runs here, on a local Ray
    print(result.status, result.outputs("bench")["table_md"])
    run_id = detflow.submit("workflows/rtmdet.yaml", address="http://head:8265",   # returns at once
                            state_url="postgresql+psycopg://detflow@db/detflow")   # a DB the cluster reaches
    detflow.status(run_id).steps["train"]["status"]
    detflow.sweep(base="workflows/configs/rtmdet_tiny_synth.yaml", name="s1",
                  space={"model.assigner.soft_center_alpha": {"uniform": [5, 20]}})
    detflow.nas("workflows/nas/spinenet_proxy_nas.yaml")      # SpineNet architecture search
    detflow.compare(sweep="s1").rows                           # its trials side by side (mean ± std over seeds)
    detflow.validate("workflows/configs/rtmdet_tiny_synth.yaml")   # ("train", TrainConfig(...))

Every file these functions read is a user file: it must start with its ``kind:`` line
(:mod:`detflow.config.kinds`). :data:`CONFIG_KINDS` is the one table of config kinds.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml
from pydantic import BaseModel

from .config.base import read_yaml
from .config.compose import parse_config
from .config.kinds import KIND_NAMES, check_kind, load_user_config, read_user_config
from .config.train import TrainConfig
from .errors import ConfigError, RuntimeFailure, UserInputError
from .paths import check_run_id
from .storage import is_remote, redact, strip_credentials
from .weights.resolve import is_reference
from .workflows.engine import RunResult, cancel_run, driver_lost, new_run_id, resume_workflow, run_dir, run_workflow
from .workflows.lease import LeaseInfo
from .workflows.lint import load_workflow
from .workflows.schema import Workflow
from .workflows.state import RunStatus, StateStore

if TYPE_CHECKING:
    from .tracking.compare import Comparison

__all__ = ["run", "submit", "status", "resume", "cancel", "logs", "plan", "list_runs", "sweep", "nas", "compare",
           "validate", "step_output",
           "prepare_job", "JobSpec", "ConfigKind", "CONFIG_KINDS", "cluster_state_url", "cluster_python",
           "CLUSTER_PYTHON_ENV"]


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


CLUSTER_PYTHON_ENV = "DETFLOW_CLUSTER_PYTHON"
# Keys whose values are config files a step reads: uploaded with a submitted job (working_dir).
CONFIG_KEYS = ("config", "spec")
# Keys whose values are data or storage locations: never uploaded; a local one must be shared storage.
DATA_KEYS = ("annotations", "images", "pretrained", "teacher", "storage")
_DEFAULT_STATE = "sqlite:///$DETFLOW_HOME/workflows.db (the default: DETFLOW_STATE_URL is unset)"


@dataclass
class JobSpec:
    """What :func:`submit` hands the Ray Jobs API; ``warnings``: local data paths the cluster must share."""

    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def cluster_state_url(state_url: str | None = None) -> str:
    """The state URL a submitted driver gets: ``state_url`` (or ``$DETFLOW_STATE_URL``) without its
    password; a SQLite URL (the default too) is a UserInputError, since only this machine reaches it."""
    url = state_url or os.environ.get("DETFLOW_STATE_URL") or ""
    if not url or url.startswith("sqlite"):
        shown = redact(url) if url else _DEFAULT_STATE
        raise UserInputError(f"--state-url / DETFLOW_STATE_URL: {shown} is a SQLite file only this machine can "
                             "reach; give a database the cluster reaches too, e.g. --state-url "
                             "postgresql+psycopg://USER@HOST/DB (nodes read the password from PGPASSWORD or ~/.pgpass)")
    return strip_credentials(url)


def cluster_python(python: str | None = None) -> str:
    """The interpreter the job runs on the cluster: ``python``, ``$DETFLOW_CLUSTER_PYTHON`` or ``python``."""
    return python or os.environ.get(CLUSTER_PYTHON_ENV) or "python"


def prepare_job(wf: Workflow, run_id: str, job_dir: Path, *, state_url: str, python: str = "python",
                lineage: bool = True) -> JobSpec:
    """Write ``workflow.yaml`` and the config files it names into ``job_dir`` (the job's working_dir,
    paths rewritten relative to it) and build the job; ``state_url`` must carry no password."""
    staged, warnings = _stage_workflow({"kind": "workflow", **wf.to_dict()}, job_dir)  # the job reads a user file
    from .atomic import atomic_write

    atomic_write(job_dir / "workflow.yaml", yaml.safe_dump(staged, sort_keys=False))
    args = [*shlex.split(python), "-m", "detflow", "run", "workflow.yaml", "--run-id", run_id, "--state-url", state_url]
    if not lineage:
        args.append("--no-lineage")
    return JobSpec(entrypoint=shlex.join(args), runtime_env={"working_dir": str(job_dir)},
                   metadata={"detflow_run_id": run_id, "detflow_workflow": wf.name}, warnings=warnings)


def _stage_workflow(spec: dict, job_dir: Path) -> tuple[dict, list[str]]:
    """``spec`` with every config file (``config:``, ``spec:``) copied under ``job_dir/configs`` and
    named by its relative path there; warnings name the local data paths it keeps."""
    spec, copies, warnings = copy.deepcopy(spec), {}, []
    _stage_node(spec.get("defaults"), "defaults", job_dir, copies, warnings)
    for step in spec.get("steps") or []:
        _stage_node(step.get("with"), f"steps.{step.get('id')}.with", job_dir, copies, warnings)
    return spec, warnings


def _stage_node(node: Any, where: str, job_dir: Path, copies: dict[str, str], warnings: list[str]) -> None:
    """Rewrite config-file values under ``node`` in place (see :func:`_stage_workflow`)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _stage_node(item, f"{where}[{i}]", job_dir, copies, warnings)
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if isinstance(value, str) and key in CONFIG_KEYS and not is_remote(value):
            node[key] = _stage_config(value, f"{where}.{key}", job_dir, copies, warnings)
        elif isinstance(value, str) and key in DATA_KEYS and Path(value).is_absolute():
            warnings.append(f"{where}.{key}: {value} is a path on this machine; the cluster reads it at the same "
                            "path (use shared storage or s3://)")
        else:
            _stage_node(value, f"{where}.{key}", job_dir, copies, warnings)


def _stage_config(path: str, where: str, job_dir: Path, copies: dict[str, str], warnings: list[str]) -> str:
    """Copy config file ``path`` to ``job_dir/configs/NN-name`` (once per file); returns that relative path.
    Inside it, a nested ``spec:`` is staged too and relative data paths are made absolute (against
    the file's directory, as the file's own relative paths mean)."""
    source = Path(path).expanduser().resolve()
    if str(source) in copies:
        return copies[str(source)]
    if not source.is_file():
        raise UserInputError(f"{where}: {path}: no such file (a submitted job uploads the config files its steps name)")
    rel = f"configs/{len(copies) + 1:02d}-{source.name}"
    copies[str(source)] = rel
    target = job_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    data = read_yaml(source)
    if isinstance(data, (dict, list)):
        before = copy.deepcopy(data)
        _stage_nested(data, source.parent, where, job_dir, copies, warnings)
        if data != before:
            from .atomic import atomic_write

            atomic_write(target, yaml.safe_dump(data, sort_keys=False))
            return rel
    shutil.copyfile(source, target)
    return rel


def _stage_nested(node: Any, base: Path, where: str, job_dir: Path, copies: dict[str, str], warnings: list[str]) -> None:
    """In a staged config file: stage ``spec:`` files, resolve relative data paths against ``base``."""
    items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else ()
    for key, value in list(items):
        if isinstance(value, str) and key in CONFIG_KEYS and not is_remote(value):
            node[key] = _stage_config(str(base / value), f"{where} -> {key}", job_dir, copies, warnings)
        elif isinstance(value, str) and key in DATA_KEYS and not is_remote(value) and not is_reference(value):
            node[key] = str(base / value) if not Path(value).is_absolute() else value
            warnings.append(f"{where} -> {key}: {node[key]} is a path on this machine; the cluster reads it at "
                            "the same path (use shared storage or s3://)")
        else:
            _stage_nested(value, base, where, job_dir, copies, warnings)


def _open_store(state_url: str | None) -> StateStore:
    """The state DB; one that cannot be reached is a one-line RuntimeFailure naming it (redacted)."""
    from sqlalchemy.exc import OperationalError

    try:
        return StateStore(state_url)
    except OperationalError as exc:
        url = state_url or os.environ.get("DETFLOW_STATE_URL") or ""
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise RuntimeFailure(f"--state-url / DETFLOW_STATE_URL: cannot reach the state database {redact(url)}: "
                             f"{redact(reason)}") from None


def submit(workflow: str | os.PathLike, *, address: str, overrides: Iterable[str] = (), state_url: str | None = None,
           run_id: str | None = None, lineage: bool = True, python: str | None = None) -> str:
    """Validate here, then run the driver on a Ray cluster as a Ray Job; returns the run id at once.

    The job runs ``python -m detflow run workflow.yaml --run-id RUN_ID --state-url URL`` with the
    cluster's interpreter (``python``, ``$DETFLOW_CLUSTER_PYTHON`` or ``python``); its working_dir holds
    the resolved workflow and the config files it names. The state database must be one the cluster
    reaches (not SQLite); the job gets its URL without the password, and passes no other setting:
    MLflow, S3 and their credentials come from the nodes' own environment.
    """
    public_url = cluster_state_url(state_url)  # before anything is written
    wf, source = _load(workflow, list(overrides))
    run_id = check_run_id(run_id) if run_id else new_run_id(wf.name)
    job_dir = Path(tempfile.mkdtemp(prefix="detflow-submit-"))
    try:
        job = prepare_job(wf, run_id, job_dir, state_url=public_url, python=cluster_python(python), lineage=lineage)
        for warning in job.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        store = _open_store(state_url)
        store.create_run(run_id, wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps], source=source,
                         address=address)
        try:
            job_id = _submit_job(address, job, run_id)
        except Exception as exc:  # noqa: BLE001 — recorded on the run, re-raised as one line
            store.update_run(run_id, status=RunStatus.FAILED, error=f"submit failed: {redact(exc)}"[:1000])
            raise RuntimeFailure(f"could not submit to the Ray job server at {redact(address)}: {redact(exc)}") from None
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)  # uploaded to the cluster by now
    store.update_run(run_id, job_id=job_id)
    return run_id


def _submit_job(address: str, job: JobSpec, run_id: str, wait_s: float = 90.0) -> str:
    """Submit, retrying while a freshly started head has no job agent yet."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + wait_s
    while True:
        try:
            client = JobSubmissionClient(address)
            return client.submit_job(entrypoint=job.entrypoint, submission_id=run_id, runtime_env=job.runtime_env,
                                     metadata=job.metadata)
        except Exception as exc:  # noqa: BLE001
            transient = "No available agent" in str(exc) or "try again" in str(exc)
            if not transient or time.time() > deadline:
                raise
            time.sleep(2.0)


def status(run_id: str | None = None, *, state_url: str | None = None, address: str | None = None) -> RunResult:
    """The state of run ``run_id`` (default: the latest run). A submitted run (or any run, with
    ``address``: the Ray Jobs API, e.g. ``http://HEAD:8265``) is first synced with its Ray job."""
    store = _open_store(state_url)
    run_obj = store.get_run(run_id) if run_id else store.latest_run()
    if run_obj is None:
        raise UserInputError(f"no workflow run {run_id!r}" if run_id else "no workflow runs yet; start one with `detflow run WF.yaml`")
    if (run_obj.job_id or address) and run_obj.status not in RunStatus.FINAL:
        _sync_job(store, run_obj, address)
        run_obj = store.get_run(run_obj.id)
    result = RunResult.from_store(store, run_obj.id)
    if driver_lost(run_obj) and not run_obj.job_id:
        result.error = (f"the driver (pid {run_obj.driver_pid} on {run_obj.driver_host}) is gone; continue the run "
                        f"with `detflow resume {run_obj.id}`")
    return result


def _job_target(run_obj: Any, address: str | None) -> tuple[str | None, str]:
    """(Jobs API address, job id) of a run: ``address`` or the one it was submitted to; the job id
    it was given (submit uses the run id)."""
    return address or (run_obj.address if run_obj.job_id else None), run_obj.job_id or run_obj.id


def _sync_job(store: StateStore, run_obj: Any, address: str | None = None) -> None:
    """Reconcile a run with its ended Ray job when no driver holds the run's lease: a cancel was
    requested → cancelled; an ``interrupted`` run stays resumable; a pending/running one whose job
    failed or was stopped → failed with the job's last log line, whose job SUCCEEDED → a "driver lost
    its state" error with the status kept (never failed: the driver finished, its state went elsewhere)."""
    from ray.job_submission import JobStatus

    address, job_id = _job_target(run_obj, address)
    if address is None:
        return
    try:
        client = _job_client(address)
        job_status = client.get_job_status(job_id)
        if not job_status.is_terminal():
            return
        lines = [ln for ln in client.get_job_logs(job_id).splitlines() if ln.strip()]
    except Exception:  # noqa: BLE001 — the job server may be gone; keep the stored state
        return
    run_obj = store.get_run(run_obj.id)
    if run_obj.status in RunStatus.FINAL or LeaseInfo.of(run_obj).live():
        return
    hint = f"full log: `ray job logs {job_id} --address {address}`"
    if run_obj.cancel_requested:
        cancel_run(run_obj.id, state_url=store.url, wait_s=0)
    elif run_obj.status not in (RunStatus.PENDING, RunStatus.RUNNING):
        return  # interrupted: resumable, whatever its job did
    elif job_status == JobStatus.SUCCEEDED:
        store.update_run(run_obj.id, error=f"driver lost its state: the Ray job SUCCEEDED but the run has no final "
                                           f"state ({run_obj.status}); did its driver write to another state "
                                           f"database than {redact(store.url)}? check DETFLOW_STATE_URL on the "
                                           f"cluster; {hint}")
    else:
        detail = redact(lines[-1]) if lines else "no output"
        store.update_run(run_obj.id, status=RunStatus.FAILED, finished_at=time.time(),
                         error=f"Ray job {job_id} {job_status.value.lower()}: {detail}; {hint}"[:2000])


def _job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def list_runs(limit: int = 20, *, state_url: str | None = None) -> list[dict]:
    """Recent runs, newest first: ``{run_id, workflow, status, created_at, error}``."""
    return [{"run_id": r.id, "workflow": r.workflow, "status": r.status, "created_at": r.created_at, "error": r.error}
            for r in StateStore(state_url).list_runs(limit)]


def resume(run_id: str, *, address: str | None = None, state_url: str | None = None, lineage: bool = True,
           quiet: bool = False) -> RunResult:
    """Continue a failed, cancelled or interrupted run; finished steps are not run again."""
    return resume_workflow(run_id, state_url=state_url, address=address, lineage=lineage, quiet=quiet)


def cancel(run_id: str, *, state_url: str | None = None, address: str | None = None) -> str:
    """Stop a run's running steps; returns the resulting run status, or ``"cancel requested"`` when the
    run's driver still holds its lease after the wait (it cancels the run when it next polls). A
    submitted run's Ray job (on ``address``, default the one it was submitted to) is stopped too."""
    store = _open_store(state_url)
    run_obj = store.get_run(run_id)
    if run_obj is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    outcome = cancel_run(run_id, state_url=state_url)
    job_address, job_id = _job_target(run_obj, address)
    if job_address is not None:
        _stop_job(job_address, job_id, explicit=address is not None)
    return outcome


def _stop_job(address: str, job_id: str, *, explicit: bool, wait_s: float = 60.0) -> None:
    """``stop_job``, then wait up to ``wait_s`` for the job to end, so that a returned ``cancel``
    means Ray says the job is STOPPED (Ray stops it asynchronously: SIGTERM, a grace period, then
    SIGKILL). A no-op for an ended or unknown job; an unreachable job server named with
    ``--address`` is a RuntimeFailure, otherwise ignored (the run may predate it)."""
    try:
        client = _job_client(address)
    except Exception as exc:  # noqa: BLE001
        if explicit:
            raise RuntimeFailure(f"--address {redact(address)}: cannot reach the Ray job server: {redact(exc)}") from None
        return
    with contextlib.suppress(Exception):  # already ended, or not a job of this server
        client.stop_job(job_id)
        deadline = time.monotonic() + wait_s
        while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)


def logs(run_id: str, step: str | None = None, *, state_url: str | None = None, address: str | None = None) -> str:
    """The driver log of a run — from the Ray Jobs API for a submitted run (or with ``address``) — or
    one step's log (all attempts; a local path or a storage URL such as ``s3://…/step.log``)."""
    store = _open_store(state_url)
    run_obj = store.get_run(run_id)
    if run_obj is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    if step is None:
        return _driver_log(run_obj, address)
    row = store.step(run_id, step)
    if row is None:
        names = ", ".join(s.step_id for s in store.steps(run_id))
        raise UserInputError(f"run {run_id!r} has no step {step!r}; steps: {names}")
    return _step_log(row.log_path, started=row.started_at is not None)


def step_output(run_id: str, step: str, *keys: str, state_url: str | None = None) -> str:
    """The stored location (a local path or a storage URL) of the first of ``keys`` in the outputs of
    step ``step`` of run ``run_id``; a one-line UserInputError when the run, the step or the output is
    missing, or the step has not succeeded."""
    store = _open_store(state_url)
    if store.get_run(run_id) is None:
        raise UserInputError(f"no workflow run {run_id!r}; list runs with `detflow status`")
    row = store.step(run_id, step)
    if row is None:
        names = ", ".join(s.step_id for s in store.steps(run_id))
        raise UserInputError(f"run {run_id!r} has no step {step!r}; steps: {names}")
    outputs = row.outputs_dict
    found = next((outputs[k] for k in keys if outputs.get(k) is not None), None)
    if found is None:
        raise UserInputError(f"step {step!r} of run {run_id!r} ({row.kind}, {row.status}) has no "
                             f"{' or '.join(keys)} output")
    return str(found)


def _driver_log(run_obj: Any, address: str | None) -> str:
    job_address, job_id = _job_target(run_obj, address)
    if job_address is None:
        path = run_dir(run_obj.id) / "driver.log"
        return path.read_text() if path.is_file() else ""
    try:
        return _job_client(job_address).get_job_logs(job_id)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"cannot read the driver log of Ray job {job_id} from {redact(job_address)}: "
                             f"{redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}") from None


def _step_log(location: str | None, *, started: bool) -> str:
    """The text at a step's ``log_path`` ("" before the step first ran)."""
    from . import artifact_store

    if location and artifact_store.exists(location):
        return artifact_store.read_text(location)
    if location and started and not artifact_store.is_uri(location):
        raise RuntimeFailure(f"step log {location}: not on this machine (the step ran on a cluster node); set "
                             "`defaults.storage` to shared storage such as s3://BUCKET/PREFIX to read logs anywhere")
    return ""


def sweep(base: str | os.PathLike | dict | BaseModel | None = None, space: dict[str, Any] | None = None, *,
          metric: str = "val/bbox_mAP", mode: str = "max", num_samples: int = 8, max_concurrent: int = 2,
          scheduler: dict | str | None = "asha", search: dict | str | None = "tpe", name: str,
          resume: bool = False, **extra: Any) -> Any:
    """Run (or, with ``resume=True``, continue) a Ray Tune + Optuna sweep; returns its ``SweepResult``.

    ``base`` is a training-config YAML path (a user file: ``kind: train``), a dict or a
    ``TrainConfig``; ``space`` maps dotted config paths to ``{"uniform": [lo, hi]}``,
    ``{"loguniform": …}``, ``{"int": …}``, ``{"choice": [...]}`` or a fixed value. ``extra`` takes the
    other :class:`~detflow.tune.config.SweepConfig` fields (``resources``, ``max_retries``,
    ``overrides``, ``storage``). A space path the model's family lacks is refused before Ray starts.

    >>> result = detflow.sweep(  # doctest: +SKIP
    ...     base="workflows/configs/rtmdet_tiny_synth.yaml",
    ...     space={"model.assigner.soft_center_alpha": {"uniform": [5, 20]}},
    ...     metric="val/bbox_mAP50", num_samples=8, scheduler={"name": "asha", "grace_period": 1}, name="alpha")
    >>> result.best_values, result.best_config_path, result.parent_run_id  # doctest: +SKIP
    """
    from .tune.config import SweepConfig
    from .tune.runner import find_sweep, run_sweep

    if resume and base is None:
        cfg, config_dir = find_sweep(name)
        return run_sweep(cfg, config_dir=config_dir, resume=True)
    data = {
        "name": name, "base": str(_sweep_base(base, name)), "metric": metric, "mode": mode, "space": space or {},
        "num_samples": num_samples, "max_concurrent": max_concurrent,
        "scheduler": {"name": scheduler} if isinstance(scheduler, str) else (scheduler or {"name": "none"}),
        "search": {"name": search} if isinstance(search, str) else (search or {}), **extra,
    }
    cfg = parse_config(SweepConfig, data, f"detflow.sweep(name={name!r})")
    return run_sweep(cfg, config_dir=Path.cwd(), resume=resume)


def _sweep_base(base: str | os.PathLike | dict | BaseModel | None, name: str) -> Path:
    """The base training config of :func:`sweep` as a file: a path (its ``kind: train`` checked) as
    is, a dict or TrainConfig written under the state dir (relative dataset paths from the cwd)."""
    from .paths import state_dir
    from .tune.results import _absolute_paths

    if base is None:
        raise UserInputError("detflow.sweep: base= (a training config path, dict or TrainConfig) is required")
    if isinstance(base, (str, os.PathLike)):
        read_user_config(base, "train")
        return Path(base).resolve()
    data = base.model_dump(mode="json") if isinstance(base, BaseModel) else {"kind": "train", **dict(base)}
    check_kind(data, "train", f"detflow.sweep(name={name!r}): base")
    data = _absolute_paths(data, Path.cwd())
    path = state_dir() / "sweeps" / f"{name}.base.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    from .atomic import atomic_write

    atomic_write(path, yaml.safe_dump(data, sort_keys=False))
    return path


def nas(config: str | os.PathLike | None = None, *, name: str | None = None, resume: bool = False,
        **overrides: Any) -> Any:
    """Run a SpineNet architecture search from a NAS YAML (``kind: nas``), or resume one by ``name``;
    keyword ``overrides`` are ``--set`` style (``num_samples=4``). Returns its ``NasResult``.

    >>> result = detflow.nas("workflows/nas/spinenet_proxy_nas.yaml", max_concurrent_trials=2)  # doctest: +SKIP
    >>> result.best_config_path, result.parent_run_id, result.front  # doctest: +SKIP
    """
    from .archsearch.runner import find_nas, load_nas_config, run_nas

    if resume:
        cfg, config_dir = find_nas(name or "")
        return run_nas(cfg, config_dir=config_dir, resume=True)
    if config is None:
        raise UserInputError("detflow.nas: give a NAS YAML path, or name=… with resume=True")
    cfg, config_dir = load_nas_config(config, [f"{k}={v}" for k, v in overrides.items()])
    return run_nas(cfg, config_dir=config_dir)


def compare(*, sweep: str | None = None, nas: str | None = None, workflow: str | None = None,
            tags: dict[str, str] | Iterable[str] | None = None, experiment: str | None = None,
            metrics: Iterable[str] | None = None, group_seeds: bool = True) -> Comparison:
    """``detflow compare``: the MLflow runs of a sweep, a NAS, a workflow run, tags (``{"k": "v"}`` or
    ``["k=v"]``) and/or an experiment, side by side; returns a :class:`~detflow.tracking.compare.Comparison`.

    Its columns are the params that differ between the runs and ``metrics`` (default: the
    ``val/bbox_mAP*`` ones present); rows are sorted by the first metric, best first. Runs that
    differ only in a param ending in ``seed`` form one row with ``mean ± std (n=…)`` per metric
    (``group_seeds=False``: one row per run). Nothing matched: UserInputError naming the selector.

    >>> table = detflow.compare(sweep="alpha", metrics=["val/bbox_mAP50"])  # doctest: +SKIP
    >>> [(row.name, row.params, row.metrics["val/bbox_mAP50"].mean) for row in table.rows]  # doctest: +SKIP
    """
    from .tracking.compare import Selection, compare_runs, parse_tags

    selection = Selection(sweep=sweep, nas=nas, workflow=workflow, tags=parse_tags(tags), experiment=experiment)
    return compare_runs(selection, metrics=list(metrics or []), group_seeds=group_seeds)


@dataclass(frozen=True)
class ConfigKind:
    """A config kind: its class and ``load(path, overrides) -> config``, which reads a user file of
    that kind and checks everything that can be checked before Ray starts."""

    name: str
    cls: type[BaseModel]
    load: Any


def _load_train(path: Path, overrides: list[str]) -> TrainConfig:
    return load_user_config(TrainConfig, path, overrides)


def _load_workflow(path: Path, overrides: list[str]) -> Workflow:
    return load_workflow(path, overrides)


def _load_sweep(path: Path, overrides: list[str]) -> BaseModel:
    """A sweep file: its space paths, its base config and every range's extremes validated."""
    from .paths import resolve_path
    from .tune.runner import _validate, load_sweep_config

    cfg, config_dir = load_sweep_config(path, overrides)
    base_path = resolve_path(cfg.base, config_dir)
    _validate(cfg, read_yaml(base_path) or {}, str(base_path))
    return cfg


def _load_nas(path: Path, overrides: list[str]) -> BaseModel:
    """A NAS file and its base spinenet training config."""
    from .archsearch.runner import _base_config, load_nas_config

    cfg, config_dir = load_nas_config(path, overrides)
    _base_config(cfg, config_dir)
    return cfg


def _config_kinds() -> dict[str, ConfigKind]:
    from .archsearch.config import NasConfig
    from .tune.config import SweepConfig

    table = (ConfigKind("train", TrainConfig, _load_train), ConfigKind("workflow", Workflow, _load_workflow),
             ConfigKind("sweep", SweepConfig, _load_sweep), ConfigKind("nas", NasConfig, _load_nas))
    return {k.name: k for k in table}


CONFIG_KINDS: dict[str, ConfigKind] = _config_kinds()


def validate(path: str | os.PathLike, overrides: Iterable[str] = (), *, kind: str | None = None) -> tuple[str, BaseModel]:
    """``detflow config validate``: read user file ``path`` (``--set`` ``overrides`` applied), check
    it by its ``kind:`` line (or require ``kind``) and return ``(kind, config)``; ConfigError otherwise.

    >>> detflow.validate("workflows/configs/rtmdet_tiny_synth.yaml")[0]  # doctest: +SKIP
    'train'
    """
    if kind is not None and kind not in CONFIG_KINDS:
        raise ConfigError([f"--kind {kind}: expected one of {' | '.join(CONFIG_KINDS)}"])
    data = read_yaml(path)
    found = check_kind({} if data is None else data, kind or KIND_NAMES, str(path))
    chosen = CONFIG_KINDS[found["kind"]] if isinstance(found, dict) else CONFIG_KINDS[kind or "train"]
    return chosen.name, chosen.load(Path(path), list(overrides))
