"""S3-compatible storage for checkpoints and run directories, configured by URL + the standard AWS
variables, and redaction of credentials from anything printed or logged.

Configuration (never in configs, params or logs):

    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN]   credentials
    AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL    a non-AWS endpoint (SeaweedFS,
                                                                      MinIO, Ceph …), addressed path-style
    AWS_REGION / AWS_DEFAULT_REGION                                    region (default us-east-1)

Example::

    import ray.train
    from detflow.storage import ray_storage, materialize
    path, fs = ray_storage("s3://team-runs/detflow")          # ("team-runs/detflow", S3FileSystem)
    ray.train.RunConfig(name="exp", storage_path=path, storage_filesystem=fs)
    local = materialize("s3://team-runs/detflow/exp/epoch_0001-1700000000")   # a local directory
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from .errors import RuntimeFailure, UserInputError
from .redact import REDACTED, SECRET_ENV, redact_text as redact, strip_credentials  # noqa: F401  (the one rule)
from .s3settings import S3Settings, _pyarrow_s3, s3_settings, split_s3  # noqa: F401  (below artifact_store)

__all__ = ["S3Settings", "s3_settings", "is_remote", "split_s3", "ray_storage", "s3_client", "upload_dir",
           "download_dir", "materialize", "redact", "SECRET_ENV"]

# True for ``scheme://…`` locations (``file://`` excluded): the storage layer's one rule.
from .artifact_store import is_uri as is_remote  # noqa: E402


def ray_storage(uri: str | os.PathLike) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``.

    A local path comes back absolute with no filesystem. ``s3://bucket/prefix`` with an endpoint
    variable set gives ``("bucket/prefix", pyarrow.fs.S3FileSystem(...))`` on that endpoint
    (path-style, credentials from the environment); on AWS itself (no endpoint) the URI is returned
    unchanged and Ray/pyarrow resolve credentials the usual way. Other URIs are passed through.
    """
    text = str(uri)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if not is_remote(text):
        return str(Path(text).expanduser().resolve()), None
    if not text.startswith(("s3://", "s3a://")):
        return text, None
    settings = s3_settings()
    if settings.endpoint is None:
        return text, None
    bucket, key = split_s3(text)
    return f"{bucket}/{key}".rstrip("/"), _pyarrow_s3(settings)


def s3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client for ``settings`` (default: the environment), path-style on custom endpoints."""
    import boto3
    from botocore.config import Config

    s = settings or s3_settings()
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=s.endpoint, aws_access_key_id=s.access_key,
                        aws_secret_access_key=s.secret_key, aws_session_token=s.session_token,
                        region_name=s.region, config=config if s.endpoint else None)


def _s3_error(action: str, uri: str, exc: BaseException) -> RuntimeFailure:
    return RuntimeFailure(f"{action} {redact(uri)} failed: {redact(f'{type(exc).__name__}: {exc}')}")


def upload_dir(local_dir: str | os.PathLike, uri: str, *, client: Any = None) -> list[str]:
    """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``; returns the keys."""
    root = Path(local_dir)
    if not root.is_dir():
        raise UserInputError(f"{root}: expected a directory to upload")
    bucket, prefix = split_s3(uri)
    client = client or s3_client()
    keys = []
    try:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix, path.relative_to(root).as_posix()]))
            client.upload_file(str(path), bucket, key)
            keys.append(key)
    except Exception as exc:  # botocore errors carry the endpoint, never the secret; redact anyway
        raise _s3_error("upload to", uri, exc) from None
    return keys


def download_dir(uri: str, local_dir: str | os.PathLike, *, client: Any = None) -> Path:
    """Download every object under ``s3://bucket/prefix/`` into ``local_dir`` (relative layout kept).

    Keys map to paths by :func:`detflow.artifact_store.key_path` (a key with ``..``, ``.``, empty
    segments or a leading ``/`` is refused before anything is written), the total size is capped by
    :func:`detflow.artifact_store.max_download_bytes`, and the files land in a temporary directory
    next to ``local_dir``, renamed into place only when all are complete."""
    import shutil
    import tempfile

    from .artifact_store import _move_into, key_path, max_download_bytes

    bucket, prefix = split_s3(uri)
    dest = Path(local_dir)
    client = client or s3_client()
    base = f"{prefix}/" if prefix else ""
    tmp: Path | None = None
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        objects = [o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        if not objects:
            raise UserInputError(f"{redact(uri)}: no objects under this prefix")
        cap = max_download_bytes()
        if sum(int(o.get("Size") or 0) for o in objects) > cap:
            raise UserInputError(f"{redact(uri)}: more than {cap} bytes to download (the limit; raise it with "
                                 f"DETFLOW_MAX_DOWNLOAD_BYTES)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.part-", dir=dest.parent))
        root = tmp / "d"
        targets = [(o["Key"], key_path(o["Key"][len(base):], root, uri)) for o in objects]
        for key, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
        if sum(target.stat().st_size for _, target in targets) > cap:  # objects grown since the listing
            raise UserInputError(f"{redact(uri)}: more than {cap} bytes to download (the limit; raise it with "
                                 f"DETFLOW_MAX_DOWNLOAD_BYTES)")
        _move_into(root, dest)
    except UserInputError:
        raise
    except Exception as exc:
        raise _s3_error("download of", uri, exc) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def materialize(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local copy of ``uri`` (:func:`detflow.artifact_store.materialize`: once per process, removed at
    exit), or with ``cache_dir`` a download into that directory; a local path is returned as is."""
    from . import artifact_store

    if cache_dir is not None and artifact_store.is_uri(uri):
        return artifact_store.download(uri, cache_dir)
    return artifact_store.materialize(uri)


# ------------------------------------------------------------------ what may leave this process
# A process hands settings to another (a Ray job, a step task, a Train worker, a Tune trial) only
# through public_env(): non-secret settings, URLs without their passwords. Secrets stay in each node's
# own environment (Kubernetes secrets, a profile …) and are read there by their standard names.

# Variables whose values are credentials: never forwarded, never logged.
CREDENTIAL_ENV = SECRET_ENV + ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                               "MLFLOW_TRACKING_CLIENT_CERT_PATH", "DATABRICKS_TOKEN")
# Non-secret settings a node may take from the process that starts work on it, when it has none itself.
PUBLIC_ENV = ("MLFLOW_TRACKING_URI", "DETFLOW_STATE_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
              "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_DISABLE_TELEMETRY")

__all__ += ["strip_credentials", "CREDENTIAL_ENV", "PUBLIC_ENV", "secret_values", "public_env",
            "apply_public_env", "ray_storage_from_env"]


def secret_values(env: Mapping[str, str] | None = None) -> set[str]:
    """The secret values of ``env`` (default ``os.environ``): the credential variables' values and the
    passwords inside URL values (4 characters or more: shorter ones cannot be searched for)."""
    env = os.environ if env is None else env
    found = {env[name] for name in CREDENTIAL_ENV if env.get(name)}
    for value in env.values():
        match = re.search(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]*:(?P<password>[^/@\s]+)@", value or "")
        if match:
            found.add(match.group("password"))
    return {v for v in found if len(v) >= 4}


def public_env(env: Mapping[str, str] | None = None, names: tuple[str, ...] = PUBLIC_ENV, *,
               keep_stripped_urls: bool = True) -> dict[str, str]:
    """The settings among ``names`` that ``env`` (default ``os.environ``) may hand to another process:
    never a :data:`CREDENTIAL_ENV` variable, never ``DETFLOW_HOME`` (a node uses its own), URLs with
    their credentials stripped (:func:`strip_credentials`). ``keep_stripped_urls=False`` leaves out a
    URL that had credentials instead: for Ray ``runtime_env`` variables, which replace the receiving
    node's own (complete) value rather than fill a gap."""
    env = os.environ if env is None else env
    secrets = secret_values(env)
    out: dict[str, str] = {}
    for name in names:
        value = env.get(name)
        if not value or name in CREDENTIAL_ENV or name == "DETFLOW_HOME":
            continue
        public = strip_credentials(value)
        if (public != value and not keep_stripped_urls) or any(s in public for s in secrets):
            continue
        out[name] = public
    return out


# This process's own values of PUBLIC_ENV, taken before apply_public_env first changed anything (a Ray
# worker runs many steps: what one step set must not count as the node's own for the next).
_NODE_ENV: dict[str, str | None] | None = None


def apply_public_env(forwarded: Mapping[str, str]) -> None:
    """Fill in settings this node lacks from ``forwarded`` (another process's :func:`public_env`): the
    node's own value of a :data:`PUBLIC_ENV` variable always wins (a stripped URL never replaces its
    complete one); values an earlier call set in this process are replaced. Credentials are ignored."""
    global _NODE_ENV
    if _NODE_ENV is None:
        _NODE_ENV = {name: os.environ.get(name) for name in PUBLIC_ENV}
    for name in PUBLIC_ENV:
        value = _NODE_ENV.get(name) or forwarded.get(name)
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    for name, value in forwarded.items():
        if name not in PUBLIC_ENV and name not in CREDENTIAL_ENV and name != "DETFLOW_HOME":
            os.environ.setdefault(name, value)


def ray_storage_from_env(uri: str | os.PathLike) -> tuple[str, Any]:
    """:func:`ray_storage` whose S3 filesystem carries no credentials: it is pickled into Ray (the
    ``RunConfig`` of a Train run) and resolves them on each node from that node's own environment
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role)."""
    path, fs = ray_storage(uri)
    if fs is None:
        return path, fs
    import dataclasses

    endpoint_only = dataclasses.replace(s3_settings(), access_key=None, secret_key=None, session_token=None)
    return path, _pyarrow_s3(endpoint_only)
