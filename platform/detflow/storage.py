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

import atexit
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import RuntimeFailure, UserInputError
from .tracking.store import redact_url

__all__ = ["S3Settings", "s3_settings", "is_remote", "split_s3", "ray_storage", "s3_client", "upload_dir",
           "download_dir", "materialize", "redact", "SECRET_ENV"]

# Environment variables whose values are secrets: redact() hides them wherever they appear.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
_KEY_VALUE = re.compile(r"(?i)(?P<key>[A-Za-z0-9_\-]*(?:secret|password|passwd|token|credential|signature)"
                        r"[A-Za-z0-9_\-]*)(?P<sep>\s*[=:]\s*)(?P<q>['\"]?)(?P<value>[^\s'\"&,;}]+)")
REDACTED = "***"


@dataclass(frozen=True)
class S3Settings:
    """S3 connection settings read from the environment (``repr`` never shows the secret)."""

    endpoint: str | None
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    region: str

    def __repr__(self) -> str:
        return f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r}, credentials={'set' if self.secret_key else 'unset'})"

    @property
    def endpoint_host(self) -> str | None:
        """``host:port`` of the endpoint (what pyarrow's ``endpoint_override`` takes)."""
        return None if not self.endpoint else re.sub(r"^[a-z]+://", "", self.endpoint).rstrip("/")

    @property
    def scheme(self) -> str:
        return "http" if (self.endpoint or "").startswith("http://") else "https"


def s3_settings(env: Mapping[str, str] | None = None) -> S3Settings:
    """Settings from ``env`` (default ``os.environ``): the first endpoint variable set wins."""
    env = os.environ if env is None else env
    endpoint = next((env[k] for k in _ENDPOINT_ENV if env.get(k)), None)
    return S3Settings(endpoint=endpoint, access_key=env.get("AWS_ACCESS_KEY_ID") or None,
                      secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                      session_token=env.get("AWS_SESSION_TOKEN") or None,
                      region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``scheme://…`` locations (``file://`` excluded)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``; anything else is a UserInputError."""
    match = re.match(r"^s3a?://([^/]+)/?(.*)$", uri)
    if not match or not match.group(1):
        raise UserInputError(f"{redact(uri)}: expected an S3 URI like s3://bucket/prefix")
    return match.group(1), match.group(2).strip("/")


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


def _pyarrow_s3(settings: S3Settings) -> Any:
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {"endpoint_override": settings.endpoint_host, "scheme": settings.scheme,
                              "region": settings.region}
    if settings.access_key and settings.secret_key:
        kwargs.update(access_key=settings.access_key, secret_key=settings.secret_key,
                      session_token=settings.session_token)
    try:  # path-style addressing (pyarrow >= 15 names it; older versions are path-style by default)
        return pafs.S3FileSystem(force_virtual_addressing=False, **kwargs)
    except TypeError:
        return pafs.S3FileSystem(**kwargs)


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


def _list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def download_dir(uri: str, local_dir: str | os.PathLike, *, client: Any = None) -> Path:
    """Download every object under ``s3://bucket/prefix/`` into ``local_dir`` (relative layout kept)."""
    bucket, prefix = split_s3(uri)
    dest = Path(local_dir)
    client = client or s3_client()
    base = f"{prefix}/" if prefix else ""
    try:
        keys = [k for k in _list_keys(client, bucket, base) if not k.endswith("/")]
        if not keys:
            raise UserInputError(f"{redact(uri)}: no objects under this prefix")
        for key in keys:
            target = dest / key[len(base):]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except UserInputError:
        raise
    except Exception as exc:
        raise _s3_error("download of", uri, exc) from None
    return dest


def materialize(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory with the contents of ``uri``: a local path is returned as is (must exist);
    ``s3://…`` is downloaded into ``cache_dir``, or by default into a temp dir that is reused for the same
    URI within this process and removed when it exits (checkpoint directories never change once written)."""
    text = str(uri)
    if not is_remote(text):
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.exists():
            raise UserInputError(f"{path}: no such file or directory")
        return path
    if not text.startswith(("s3://", "s3a://")):
        raise UserInputError(f"{redact(text)}: only local paths and s3:// URIs can be materialized")
    if cache_dir is not None:
        return download_dir(text, cache_dir)
    cached = _DOWNLOADS.get(text)
    if cached is not None and cached.is_dir():
        return cached
    dest = Path(tempfile.mkdtemp(prefix="detflow-s3-"))
    try:
        download_dir(text, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if not _DOWNLOADS:
        atexit.register(_remove_downloads)
    _DOWNLOADS[text] = dest
    return dest


_DOWNLOADS: dict[str, Path] = {}


def _remove_downloads() -> None:
    for path in _DOWNLOADS.values():
        shutil.rmtree(path, ignore_errors=True)
    _DOWNLOADS.clear()


def redact(text: Any, env: Mapping[str, str] | None = None) -> str:
    """``text`` with credentials removed: ``user:pass@`` in URLs, ``secret=…``/``token: …`` pairs,
    presigned-URL signatures and the values of the AWS credential variables wherever they occur."""
    out = redact_url(str(text))
    out = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{m.group('q')}{REDACTED}", out)
    env = os.environ if env is None else env
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, REDACTED)
    return out
