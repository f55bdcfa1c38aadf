"""S3 connection settings from the environment (a leaf below :mod:`detflow.artifact_store` and
:mod:`detflow.storage`, which both re-export it): endpoint, credentials, region, path-style pyarrow
filesystem. Nothing here logs or returns a secret in a ``repr``.

Example::

    >>> s3_settings({"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"}).endpoint_host
    '127.0.0.1:8333'
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import UserInputError
from .redact import redact_text as redact

__all__ = ["S3Settings", "s3_settings", "split_s3"]

_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


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


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``; anything else is a UserInputError."""
    match = re.match(r"^s3a?://([^/]+)/?(.*)$", uri)
    if not match or not match.group(1):
        raise UserInputError(f"{redact(uri)}: expected an S3 URI like s3://bucket/prefix")
    return match.group(1), match.group(2).strip("/")


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
