"""One redaction rule for everything detflow prints, stores or logs (a leaf module: stdlib only).

What goes, wherever it occurs:

- URL credentials: ``scheme://user:pass@host`` → ``scheme://***@host``;
- ``key=value`` / ``key: value`` pairs whose key names a secret (``password``, ``token``, ``signature`` …);
- the values of the AWS credential variables (:data:`SECRET_ENV`) of the environment;
- in mappings, the value of every secret-looking key (:func:`is_secret_key`), at any depth.

Example::

    >>> redact({"db": "postgresql://ci:pw@db/x", "token": "t", "epochs": 3}, env={})
    {'db': 'postgresql://***@db/x', 'token': '***', 'epochs': 3}
    >>> redact_text("AWS_SECRET_ACCESS_KEY=abcd1234 failed", env={})
    'AWS_SECRET_ACCESS_KEY=*** failed'
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

__all__ = ["REDACTED", "SECRET_ENV", "SAFE_KEYS", "is_secret_key", "redact", "redact_text", "redact_url",
           "strip_credentials"]

REDACTED = "***"
# Environment variables whose values are secrets: redact_text() hides them wherever they appear.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "key")
# Config keys that contain a secret-looking word but hold no secret.
SAFE_KEYS = frozenset({"cache_key", "sort_key", "metric_key", "key_metric", "monitor_key"})

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<auth>[^/@\s]+)@")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:\s]*)(?::[^/@\s]*)?@")
_SECRET_PARAM = re.compile(r"(?i)secret|passw|pwd|token|credential|signature|api[_\-]?key|access[_\-]?key")
_KEY_VALUE = re.compile(r"(?i)(?P<key>[A-Za-z0-9_\-]*(?:secret|password|passwd|token|credential|signature)"
                        r"[A-Za-z0-9_\-]*)(?P<sep>\s*[=:]\s*)(?P<q>['\"]?)(?P<value>[^\s'\"&,;}]+)")


def is_secret_key(key: Any) -> bool:
    """True for keys that look like credentials (``*secret*``, ``*password*``, ``*token*``, ``*key*`` …);
    a :data:`SAFE_KEYS` name, alone or as the last part of a dotted tag (``detflow.cache_key``), is not."""
    k = str(key).lower()
    return k.rsplit(".", 1)[-1] not in SAFE_KEYS and any(word in k for word in _SECRET_WORDS)


def redact_url(text: str) -> str:
    """``scheme://user:pass@host/…`` → ``scheme://***@host/…`` (anywhere in ``text``)."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)


def strip_credentials(url: str) -> str:
    """``url`` as another process may see it: the password of ``scheme://user:password@host`` removed
    (``scheme://user@host``; the receiver reads it from its own ``PGPASSWORD`` / ``.pgpass`` / …) and
    query parameters such as ``password=`` / ``token=`` / ``X-Amz-Signature=`` dropped. Other text is
    returned unchanged.

    Example: ``strip_credentials("postgresql+psycopg://ci:pw@db:5432/state")`` →
    ``"postgresql+psycopg://ci@db:5432/state"``.
    """
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}@" if m.group("user") else m.group("scheme"),
                         str(url))
    if "://" not in text or "?" not in text:
        return text
    base, _, rest = text.partition("?")
    query, hash_, fragment = rest.partition("#")
    kept = [p for p in query.split("&") if p and not _SECRET_PARAM.search(p.split("=", 1)[0])]
    return base + (f"?{'&'.join(kept)}" if kept else "") + hash_ + fragment


def redact_text(text: Any, env: Mapping[str, str] | None = None) -> str:
    """``str(text)`` with credentials removed: ``user:pass@`` in URLs, ``secret=…``/``token: …`` pairs,
    presigned-URL signatures and the values of the AWS credential variables of ``env`` (default
    ``os.environ``; values shorter than 4 characters cannot be searched for)."""
    out = redact_url(str(text))
    out = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{m.group('q')}{REDACTED}", out)
    env = os.environ if env is None else env
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, REDACTED)
    return out


def redact(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """A copy of ``value`` safe to log: in mappings (any depth, lists included) the non-empty values of
    secret-looking keys become ``"***"``, every string goes through :func:`redact_text`; other values
    (numbers, None, booleans) are returned as they are. Tuples come back as lists."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v, env))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, env) for v in value]
    if isinstance(value, str):
        return redact_text(value, env)
    return value
