"""Where runs are tracked: an embedded SQLite store under the state directory unless
``MLFLOW_TRACKING_URI`` points elsewhere (a tracking server, PostgreSQL …).

Embedded default::

    $DETFLOW_HOME/mlflow.db        SQLite backend store
    $DETFLOW_HOME/mlartifacts/     artifact root (one sub-directory per experiment)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["configure", "artifact_root", "ensure_experiment", "uses_embedded_store", "redact_url"]

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<auth>[^/@\s]+)@")


def redact_url(text: str) -> str:
    """``scheme://user:pass@host/…`` → ``scheme://***@host/…`` (anywhere in ``text``)."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)


def uses_embedded_store() -> bool:
    """True when no ``MLFLOW_TRACKING_URI`` is set (the SQLite store in the state directory is used)."""
    return not os.environ.get("MLFLOW_TRACKING_URI")


def artifact_root() -> Path:
    """Artifact root of the embedded store: ``$DETFLOW_HOME/mlartifacts`` (created)."""
    from ..paths import state_dir

    root = state_dir() / "mlartifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


def configure() -> str:
    """Point MLflow at detflow's store and return the tracking URI.

    ``MLFLOW_TRACKING_URI`` wins when set; otherwise ``sqlite:///$DETFLOW_HOME/mlflow.db``.
    Telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY=true``). Safe to call repeatedly.
    """
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    from ..paths import state_dir

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """Id of experiment ``name``, created on first use (artifacts under the embedded root by default)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if uses_embedded_store():
        safe = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name) or "experiment"
        location = (artifact_root() / safe).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another worker
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
