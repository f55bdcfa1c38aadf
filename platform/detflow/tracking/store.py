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

from ..redact import redact_url, strip_credentials  # noqa: F401  (re-exported: the one rule lives in detflow.redact)

__all__ = ["configure", "artifact_root", "ensure_experiment", "uses_embedded_store", "redact_url",
           "strip_credentials"]


# The URI configure() chose itself: mlflow.set_tracking_uri exports it as MLFLOW_TRACKING_URI,
# which must not then be mistaken for the user's choice.
_DEFAULT_URI: str | None = None


def _user_uri() -> str | None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return None if not uri or uri == _DEFAULT_URI else uri


def uses_embedded_store() -> bool:
    """True unless the user's ``MLFLOW_TRACKING_URI`` points somewhere else than a local SQLite file."""
    user = _user_uri()
    return user is None or _sqlite_file(user) is not None


def _sqlite_file(uri: str) -> Path | None:
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    return None


def artifact_root() -> Path:
    """Artifact root of the embedded store, next to its database: ``$DETFLOW_HOME/mlartifacts`` by
    default, ``DIR/mlartifacts`` for a user's ``sqlite:///DIR/x.db`` (created)."""
    from ..paths import state_dir

    db = _sqlite_file(_user_uri() or "")
    root = (db.parent if db is not None else state_dir()) / "mlartifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


def configure() -> str:
    """Point MLflow at detflow's store and return the tracking URI.

    ``MLFLOW_TRACKING_URI`` wins when set; otherwise ``sqlite:///$DETFLOW_HOME/mlflow.db``.
    Telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY=true``). Safe to call repeatedly.
    """
    global _DEFAULT_URI
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import logging

    import mlflow

    # "Creating initial MLflow database tables…" on a fresh store is noise for CLI users.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

    from ..paths import state_dir

    uri = _user_uri()
    if uri is None:
        uri = _DEFAULT_URI = f"sqlite:///{state_dir() / 'mlflow.db'}"
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
