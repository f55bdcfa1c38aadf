"""The run-scoped seam to MLflow: every module outside :mod:`detflow.tracking` logs through a
:class:`Run` (addressed by id, no global active run), so MLflow is imported here and nowhere else.

Example::

    from detflow import tracking
    run = tracking.Run.create("rtmdet-tiny", experiment="detflow", tags={"detflow.kind": "train"})
    run.log_params({"model": "rtmdet_tiny", "epochs": 3})
    for epoch in range(3):
        run.log_metrics(epoch, {"train/loss": 1.0 / (epoch + 1)})
    trial = run.child("trial-0")                     # nested run (tag mlflow.parentRunId)
    trial.end("FINISHED")
    run.end("FINISHED")

Calls are retried with bounded exponential backoff and full jitter (:class:`RetryPolicy`) when the
tracking store is unreachable or busy (a restarting server, ``database is locked``); errors that
retrying cannot fix (a bad parameter, a missing run) are raised at once.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from ..redact import redact, redact_text

__all__ = ["Run", "RetryPolicy", "TrackingUnavailable", "numeric_metrics", "search_runs", "NO_RETRY"]

T = TypeVar("T")
# MLflow error codes that retrying cannot fix.
_PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                        "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST"})
_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 500


class TrackingUnavailable(RuntimeError):
    """The tracking store stayed unreachable through every retry (the message is redacted)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter: attempt ``i`` (0-based) failing waits
    ``uniform(0, min(max_delay_s, base_delay_s * 2**i))`` before the next one; ``attempts`` in all."""

    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.max_delay_s, self.base_delay_s * 2 ** attempt)


NO_RETRY = RetryPolicy(attempts=1)


def is_transient(exc: BaseException) -> bool:
    """True for what a later attempt may not meet: MLflow errors other than ``_PERMANENT`` ones
    (a connection refused, a 503 while the server restarts), OS/network errors, HTTP-client and
    database errors (``database is locked``). A bug (TypeError …) is never retried nor spooled away."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return type(exc).__module__.split(".")[0] in ("requests", "urllib3", "sqlalchemy", "http")


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on transient errors per ``policy``; :class:`TrackingUnavailable` at the end."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — classified just below
            if not is_transient(exc):
                raise
            if attempt == policy.attempts - 1:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TrackingUnavailable(f"{what}: tracking store unavailable after {policy.attempts} "
                                          f"attempts: {redact_text(first)[:300]}") from exc
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers only (nested mappings flattened with ``/``, e.g. ``per_class/circle``; numpy/torch
    scalars converted; booleans and strings dropped); names keep ``[A-Za-z0-9_-./ ]``."""
    import re

    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            out[name] = float(value.item())
    return out


def _client():
    from mlflow.tracking import MlflowClient

    from .store import configure

    return MlflowClient(configure())


class Run:
    """One MLflow run by id. ``policy`` governs retries of every call (default :class:`RetryPolicy`)."""

    def __init__(self, run_id: str, *, client: Any = None, policy: RetryPolicy = RetryPolicy(), found: Any = None):
        self.run_id = run_id
        self.policy = policy
        self._client = client
        self.found = found  # the mlflow Run entity a search returned (its tags, status then), or None

    def __repr__(self) -> str:
        return f"Run({self.run_id!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
        return self._client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(fn, self.policy, f"{what} (run {self.run_id})")

    # ----------------------------------------------------------------------- creation
    @classmethod
    def create(cls, name: str, *, experiment: str = "detflow", tags: Mapping[str, Any] | None = None,
               parent: "Run | str | None" = None, policy: RetryPolicy = RetryPolicy()) -> "Run":
        """A new RUNNING run ``name`` in ``experiment`` (created on first use), tags redacted,
        nested under ``parent`` when given."""
        from .store import ensure_experiment

        client = _client()
        clean = {k: str(v) for k, v in redact(dict(tags or {})).items()}
        if parent is not None:
            clean["mlflow.parentRunId"] = parent.run_id if isinstance(parent, Run) else str(parent)
        exp_id = call_with_retry(lambda: ensure_experiment(experiment), policy, f"experiment {experiment}")
        info = call_with_retry(lambda: client.create_run(exp_id, run_name=name, tags=clean).info, policy,
                               f"create run {name}")
        return cls(info.run_id, client=client, policy=policy)

    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> "Run":
        """A nested run in this run's experiment (tag ``mlflow.parentRunId``)."""
        client = self.client
        clean = {k: str(v) for k, v in redact(dict(tags or {})).items()}
        clean["mlflow.parentRunId"] = self.run_id
        exp_id = self.info().experiment_id
        info = self._call(f"create child {name}", lambda: client.create_run(exp_id, run_name=name, tags=clean).info)
        return Run(info.run_id, client=client, policy=self.policy)

    def children(self, *, status: str | None = None) -> list["Run"]:
        """The direct child runs (optionally only those with ``status``, e.g. ``RUNNING``)."""
        query = f"tags.mlflow.parentRunId = '{self.run_id}'"
        if status:
            query += f" and attributes.status = '{status}'"
        exp_id = self.info().experiment_id
        return [Run(r.info.run_id, client=self.client, policy=self.policy, found=r)
                for r in self._call("search children", lambda: self.client.search_runs([exp_id], query))]

    # ----------------------------------------------------------------------- reads
    def info(self) -> Any:
        """``mlflow.entities.RunInfo`` (``status``, ``experiment_id``, ``artifact_uri`` …)."""
        return self._call("get run", lambda: self.client.get_run(self.run_id).info)

    def data(self) -> Any:
        """``mlflow.entities.RunData``: latest ``metrics``, ``params``, ``tags``."""
        return self._call("get run", lambda: self.client.get_run(self.run_id).data)

    @property
    def status(self) -> str:
        return self.info().status

    def metric_history(self, key: str) -> list[tuple[int, float, int]]:
        """``(step, value, timestamp_ms)`` of every value logged for ``key``, in step order."""
        rows = self._call(f"history {key}", lambda: self.client.get_metric_history(self.run_id, key))
        return sorted((int(m.step), float(m.value), int(m.timestamp)) for m in rows)

    # ----------------------------------------------------------------------- writes
    def log_metrics(self, step: int, metrics: Mapping[str, Any], *, timestamp_ms: int | None = None,
                    model_id: str | None = None) -> dict[str, float]:
        """Log the numeric ``metrics`` (see :func:`numeric_metrics`) at ``step`` with one timestamp,
        in batches of at most 1000, attached to the logged model ``model_id`` when given. Re-sending the same batch with the same ``timestamp_ms`` adds
        nothing (the SQL store ignores identical rows), so a retry after a lost reply is safe."""
        from mlflow.entities import Metric

        values = numeric_metrics(metrics)
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        rows = [Metric(k, v, ts, int(step), model_id=model_id) for k, v in values.items()]
        for i in range(0, len(rows), _METRICS_PER_BATCH):
            chunk = rows[i:i + _METRICS_PER_BATCH]
            self._call(f"log metrics step {step}", lambda: self.client.log_batch(self.run_id, metrics=chunk))
        return values

    def log_params(self, params: Mapping[str, Any], *, skip_existing: bool = False) -> dict[str, str]:
        """Log ``params`` (redacted, values as strings of at most 500 characters). With
        ``skip_existing`` keys the run already has are left alone (a resumed run). Returns those logged."""
        from mlflow.entities import Param

        clean = {str(k): _param_text(v) for k, v in redact(dict(params)).items()}
        if skip_existing:
            existing = self.data().params
            clean = {k: v for k, v in clean.items() if k not in existing}
        rows = [Param(k, v) for k, v in clean.items()]
        for i in range(0, len(rows), _PARAMS_PER_BATCH):
            chunk = rows[i:i + _PARAMS_PER_BATCH]
            self._call("log params", lambda: self.client.log_batch(self.run_id, params=chunk))
        return clean

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set ``tags`` (values redacted, as strings)."""
        from mlflow.entities import RunTag

        rows = [RunTag(str(k), str(v)) for k, v in redact(dict(tags)).items()]
        if rows:
            self._call("set tags", lambda: self.client.log_batch(self.run_id, tags=rows))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"log artifact {Path(path).name}",
                   lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"log artifacts {Path(directory).name}",
                   lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(f"log {artifact_file}", lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """``data`` (redacted) as a JSON or YAML artifact, by the file's suffix."""
        import yaml

        clean = redact(data)
        text = (yaml.safe_dump(clean, sort_keys=False) if artifact_file.endswith((".yaml", ".yml"))
                else json.dumps(clean, indent=2, default=str))
        self.log_text(text, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """A matplotlib figure saved as ``artifact_file`` (e.g. ``plots/curves.png``)."""
        with tempfile.TemporaryDirectory(prefix="detflow-fig-") as tmp:
            local = Path(tmp) / Path(artifact_file).name
            fig.savefig(local, dpi=110)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(local, None if parent in ("", ".") else parent)

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED)."""
        self._call(f"end {status}", lambda: self.client.set_terminated(self.run_id, status))

    def reopen(self) -> None:
        """Mark an ended run RUNNING again (a resumed workflow)."""
        self._call("reopen", lambda: self.client.update_run(self.run_id, status="RUNNING"))

    # ----------------------------------------------------------------------- model registry
    def register_model(self, name: str, artifact_subpath: str | None = None, *, tags: Mapping[str, Any] | None = None,
                       alias: str | None = None, model_tags: Mapping[str, Any] | None = None,
                       model_id: str | None = None) -> str:
        """Register a new version of ``name`` (the registered model is created on first use) from the
        logged model ``model_id`` (source ``models:/<model_id>``: the lineage the UI shows) or else
        from ``<this run's artifacts>/<artifact_subpath>``, optionally pointing ``alias`` at it; its version."""
        from mlflow.exceptions import MlflowException

        if (model_id is None) == (artifact_subpath is None):
            raise ValueError("register_model: give exactly one of artifact_subpath and model_id")
        client = self.client
        try:
            client.create_registered_model(name, tags={k: str(v) for k, v in (model_tags or {}).items()})
        except MlflowException:
            pass  # exists (or was created concurrently)
        source = f"models:/{model_id}" if model_id else f"{self.info().artifact_uri}/{artifact_subpath}"
        clean = {k: str(v) for k, v in redact(dict(tags or {})).items()}
        version = self._call(f"register {name}", lambda: client.create_model_version(
            name, source, run_id=self.run_id, tags=clean, model_id=model_id)).version
        if model_id:
            self._link_version(model_id, name, str(version))
        if alias:
            self._call(f"alias {alias}", lambda: client.set_registered_model_alias(name, alias, version))
        return str(version)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` of the registered model ``name`` at ``version``."""
        self._call(f"alias {alias}", lambda: self.client.set_registered_model_alias(name, alias, str(version)))

    def find_model_version(self, name: str, tags: Mapping[str, str]) -> str | None:
        """The newest version of ``name`` carrying all of ``tags`` (None when there is none)."""
        from mlflow.exceptions import MlflowException

        query = " and ".join([f"name='{name}'"] + [f"tags.`{k}` = '{v}'" for k, v in tags.items()])
        try:
            found = self._call(f"search {name}", lambda: self.client.search_model_versions(query))
        except MlflowException:
            return None
        return str(max(int(v.version) for v in found)) if found else None

    def _link_version(self, model_id: str, name: str, version: str) -> None:
        """Add ``{name, version}`` to the logged model's ``mlflow.modelVersions`` tag (what
        ``mlflow.register_model`` records, and the model page's "Registered versions" shows)."""
        key = "mlflow.modelVersions"
        model = self._call(f"get model {model_id}", lambda: self.client.get_logged_model(model_id))
        links = json.loads(model.tags.get(key) or "[]") + [{"name": name, "version": version}]
        self._call(f"link model {model_id}",
                   lambda: self.client.set_logged_model_tags(model_id, {key: json.dumps(links)}))


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def search_runs(query: str, *, experiments: Sequence[str] | None = None) -> list[Run]:
    """Runs matching an MLflow filter ``query`` (e.g. ``"tags.detflow.trial_id = 'x'"``), in
    ``experiments`` (ids) or in all of them; each with the run as found in ``Run.found``."""
    from mlflow.entities import ViewType

    client = _client()
    if experiments is None:
        experiments = [e.experiment_id for e in call_with_retry(
            lambda: client.search_experiments(view_type=ViewType.ALL), RetryPolicy(), "list experiments")]
    if not experiments:
        return []
    found = call_with_retry(lambda: client.search_runs(list(experiments), query, max_results=5000),
                            RetryPolicy(), "search runs")
    return [Run(r.info.run_id, client=client, found=r) for r in found]
