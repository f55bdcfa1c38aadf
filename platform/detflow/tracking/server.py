"""A team MLflow tracking server: a SQL backend store (PostgreSQL, MySQL, SQLite) and an artifact
destination (``s3://…`` or a directory) proxied by the server, so clients need only its URL.

Example::

    export AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_ENDPOINT_URL=http://127.0.0.1:8333
    detflow server --backend-store-uri postgresql+psycopg2://mlflow:…@127.0.0.1:5432/mlflow \\
                   --artifacts-destination s3://mlflow-artifacts/ --port 5000
    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000     # on every client (workflows, training)
"""
from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..redact import redact_text as redact
from ..s3settings import s3_settings

__all__ = ["ServerSpec", "server_command", "server_env", "server_url", "is_loopback"]

_BACKEND_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")


@dataclass(frozen=True)
class ServerSpec:
    """What ``detflow server`` starts (validated by :func:`server_command`)."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _backend(uri: str) -> str:
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in _BACKEND_SCHEMES:
        raise UserInputError(f"--backend-store-uri {redact(uri)}: expected a SQLAlchemy URL "
                             f"({', '.join(s + '://…' for s in _BACKEND_SCHEMES)})")
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _artifacts(dest: str) -> str:
    if dest.startswith(("s3://", "gs://", "wasbs://", "hdfs://")):
        return dest
    if "://" in dest and not dest.startswith("file://"):
        raise UserInputError(f"--artifacts-destination {redact(dest)}: expected s3://bucket/prefix or a directory")
    path = Path(dest.removeprefix("file://")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def server_command(spec: ServerSpec) -> list[str]:
    """The ``mlflow server`` command line for ``spec`` (raises UserInputError on a bad URI).

    The backend store URI (it may hold a password) is not on the command line, where ``ps`` would
    show it: :func:`server_env` passes it as ``MLFLOW_BACKEND_STORE_URI``.
    """
    _backend(spec.backend_store_uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", _artifacts(spec.artifacts_destination), "--serve-artifacts",
           "--host", spec.host, "--port", str(spec.port), "--workers", str(spec.workers)]
    if spec.allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(spec.allowed_hosts)]
    return cmd


def server_env(spec: ServerSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the backend store URI, telemetry off, MLflow's S3 endpoint taken
    from ``AWS_ENDPOINT_URL`` when only the standard variable is set."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_BACKEND_STORE_URI"] = spec.backend_store_uri
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    endpoint = s3_settings(env).endpoint
    if endpoint and not env.get("MLFLOW_S3_ENDPOINT_URL"):
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    return env


def server_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
