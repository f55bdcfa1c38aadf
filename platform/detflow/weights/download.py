"""Resumable HTTP(S) download with a progress bar and a checksum (stdlib ``urllib``).

The file grows as ``DEST.part``; an existing ``.part`` is resumed with ``Range: bytes=N-``: a
``206 Partial Content`` reply whose ``Content-Range`` starts at ``N`` is appended, a plain ``200``
restarts from byte 0, a ``416`` means the part is already whole. The SHA-256 is computed while
writing (over the kept part first), checked, and only then is the part renamed onto ``DEST``
(atomic within one filesystem). A wrong checksum deletes the part; an interrupted transfer keeps
it, so the next call resumes.

Example::

    digest = download("https://example.org/w.pth", Path("w.pth"), sha256_prefix="78e30dcc")
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import RuntimeFailure, UserInputError

__all__ = ["download", "check_digest", "sha256_file", "part_path", "ChecksumError"]

CHUNK = 1 << 20
TIMEOUT_S = 60


class ChecksumError(UserInputError):
    """A downloaded file whose SHA-256 is not the expected one (exit 2)."""


def part_path(dest: Path) -> Path:
    """Where ``dest`` grows while it downloads."""
    return dest.with_name(dest.name + ".part")


def _hash_file(h: Any, path: Path) -> Any:
    """``h`` updated with the bytes of ``path``, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return _hash_file(hashlib.sha256(), path).hexdigest()


def check_digest(name: str, digest: str, *, sha256: str | None = None, sha256_prefix: str | None = None) -> None:
    """Raise :class:`ChecksumError` naming ``name``, the expected and the actual digest when ``digest``
    is not ``sha256`` (full) or does not start with ``sha256_prefix``."""
    if sha256 and digest != sha256.lower():
        raise ChecksumError(f"{name}: sha256 mismatch: expected {sha256.lower()}, got {digest}; file removed")
    if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
        raise ChecksumError(f"{name}: sha256 mismatch: expected a digest starting {sha256_prefix.lower()} "
                            f"(published in the file name), got {digest}; file removed")


def _open(url: str, offset: int):
    """The HTTP response for ``url`` from byte ``offset`` (None: the part is already complete)."""
    req = urllib.request.Request(url, headers={"User-Agent": "detflow-weights"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)  # noqa: S310 (http/https checked by caller)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None
        raise UserInputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeFailure(f"{url}: cannot connect ({reason}); check the network or set "
                             "DETFLOW_WEIGHTS_BASE_URL / --url to a mirror") from None


def _range_start(resp) -> int | None:
    """First byte of a ``206`` reply (from ``Content-Range: bytes START-END/TOTAL``), None for a 200."""
    if resp.status != 206:
        return None
    start = (resp.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0].strip()
    return int(start) if start.isdigit() else -1


def _check_not_html(resp, url: str, page: str | None) -> None:
    if (resp.headers.get("Content-Type") or "").startswith("text/html"):
        where = f"; download it by hand from {page} and run `detflow models convert`" if page else ""
        raise UserInputError(f"{url}: the server sent a web page, not a checkpoint (a login or "
                             f"confirmation page?){where}")


def _progress(total: int | None, done: int, label: str):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total, completed=done)
    return bar, task


def download(url: str, dest: Path, *, sha256: str | None = None, sha256_prefix: str | None = None,
             page: str | None = None, progress: bool = True) -> str:
    """Fetch ``url`` to ``dest`` through ``dest.part`` (resumed when present) and return its hex
    SHA-256, checked against ``sha256`` / ``sha256_prefix`` when given.

    Raises:
        ChecksumError: wrong digest (the part is deleted, nothing is left at ``dest``).
        UserInputError: an HTTP error status, or an HTML page instead of a file.
        RuntimeFailure: no connection, or the transfer broke off (the part is kept for a resume).
    """
    if not url.startswith(("http://", "https://")):
        raise UserInputError(f"{url}: expected an http:// or https:// URL")
    dest = Path(dest)
    part = part_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    resp = _open(url, offset)
    if resp is None:  # 416: the part already holds the whole file
        digest = sha256_file(part)
    else:
        start = _range_start(resp)
        if start is not None and start != offset:  # a range we did not ask for: start over
            resp.close()
            resp, offset = _open(url, 0), 0
            start = _range_start(resp)
        with resp:
            _check_not_html(resp, url, page)
            digest = _stream(resp, part, offset if start == offset else 0, url, progress)
    try:
        check_digest(dest.name, digest, sha256=sha256, sha256_prefix=sha256_prefix)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return digest


def _stream(resp, part: Path, offset: int, url: str, progress: bool) -> str:
    """Write ``resp`` to ``part`` after its first ``offset`` bytes (hashed first); the hex digest."""
    h = _hash_file(hashlib.sha256(), part) if offset else hashlib.sha256()
    length = resp.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    bar, task = _progress(total, offset, part.name.removesuffix(".part"))
    got = 0
    with open(part, "r+b" if offset else "wb") as out, bar if progress else contextlib.nullcontext():
        out.seek(offset)
        out.truncate()
        try:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(task, advance=len(chunk))
        except OSError as exc:
            raise RuntimeFailure(f"{url}: transfer broke off after {offset + got} bytes ({exc}); "
                                 "run the same command again to resume") from None
        out.flush()
        os.fsync(out.fileno())
    if length and length.isdigit() and got != int(length):
        raise RuntimeFailure(f"{url}: got {got} of {length} bytes; run the same command again to resume")
    return h.hexdigest()

