"""``detflow models pull``: an official release downloaded, verified and converted into a detflow
checkpoint directory under ``$DETFLOW_HOME/weights``.

Layout::

    $DETFLOW_HOME/weights/
        <file>                 the official file as released (e.g. rtmdet_tiny_…-78e30dcc.pth)
        <file>.part            only while downloading (resumed by the next pull)
        <model>-<source>/      the converted checkpoint (model.pt, config.yaml, meta.json)
        manifest.json          {file: {sha256, url, model, source, checkpoint, verified}}

What is verified: a full published SHA-256 where the table has one, MMDetection's published digest
prefix (the ``-<8 hex>`` of the file name), a ``--sha256`` pin, or the digest recorded by the first
download of a release without a published checksum (trust on first use). A wrong digest or a file
the converter refuses leaves nothing behind (no file, no part, no checkpoint).

URL override (mirrors, tests): ``DETFLOW_WEIGHTS_BASE_URL=http://host/dir`` fetches
``http://host/dir/<file>``; ``url=`` fetches that exact URL.

Example::

    from detflow.weights.pull import pull
    ckpt = pull("rtmdet_tiny")      # $DETFLOW_HOME/weights/rtmdet_tiny-mmdet
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UserInputError
from .catalog import Release, find_release
from .download import ChecksumError, check_digest, download, part_path, sha256_file

__all__ = ["pull", "weights_dir", "checkpoint_dir", "read_manifest", "BASE_URL_ENV", "MANIFEST"]

BASE_URL_ENV = "DETFLOW_WEIGHTS_BASE_URL"
MANIFEST = "manifest.json"


def weights_dir() -> Path:
    """``$DETFLOW_HOME/weights`` (created)."""
    from ..paths import state_dir

    path = state_dir() / "weights"
    path.mkdir(exist_ok=True)
    return path


def checkpoint_dir(model: str, source: str) -> Path:
    """Where ``pull(model)`` puts the converted checkpoint: ``weights/<model>-<source>``."""
    return weights_dir() / f"{model}-{source}"


def read_manifest() -> dict:
    """``weights/manifest.json`` (empty when absent); a corrupt one is a one-line error."""
    from ..atomic import read_json_state

    path = weights_dir() / MANIFEST
    if not path.exists():
        return {}
    return read_json_state(path, "weights manifest", "delete it (recorded digests are then trusted afresh)")


def _record(file: str, entry: dict) -> None:
    from ..atomic import atomic_write_json

    manifest = read_manifest()
    manifest[file] = entry
    atomic_write_json(weights_dir() / MANIFEST, manifest, indent=1, sort_keys=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` (two pulls never write the same part)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _source_url(rel: Release, url: str | None) -> str:
    if url:
        return url
    base = os.environ.get(BASE_URL_ENV, "").strip()
    return f"{base.rstrip('/')}/{rel.file}" if base else rel.url


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def pull(name: str, source: str | None = None, url: str | None = None, sha256: str | None = None, *,
         progress: bool = True, notify: Callable[[str], None] = _stderr) -> Path:
    """The checkpoint directory of ``name``'s official weights, downloaded and converted on first use.

    Args:
        name: registered variant, e.g. ``rtmdet_tiny``.
        source: ``mmdet`` | ``yolov6`` | ``asff`` (default: the table's release of ``name``).
        url: fetch this URL instead of the table's (or ``$DETFLOW_WEIGHTS_BASE_URL/<file>``).
        sha256: pin the file's full hex SHA-256 (checked besides any published one).
        notify: where one-line notices go (a digest recorded on first use).

    Raises:
        UserInputError: no release, a wrong checksum, an HTTP error, or a file that is not ``name``'s
            weights; nothing is left in the weights folder for that file.
    """
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise UserInputError(f"--sha256 {sha256!r}: expected 64 hex digits")
    rel = find_release(name, source)
    if sha256 and rel.sha256 and sha256.lower() != rel.sha256:
        raise UserInputError(f"--sha256 {sha256.lower()}: the table publishes {rel.sha256} for {rel.file}")
    out = checkpoint_dir(name, rel.source)
    wdir = weights_dir()
    with _locked(wdir):
        recorded = read_manifest().get(rel.file, {}).get("sha256")
        if _is_checkpoint(out):
            if sha256 and recorded and recorded != sha256.lower():
                raise ChecksumError(f"{rel.file}: sha256 mismatch: expected {sha256.lower()}, the pulled file had "
                                    f"{recorded} ({out})")
            return out
        return _fetch_and_convert(rel, out, _source_url(rel, url), sha256, recorded, progress, notify)


def _is_checkpoint(path: Path) -> bool:
    from ..engine.checkpoint import is_checkpoint

    return is_checkpoint(path)


def _fetch_and_convert(rel: Release, out: Path, url: str, pinned: str | None, recorded: str | None,
                       progress: bool, notify: Callable[[str], None]) -> Path:
    from .convert import convert_official

    raw = weights_dir() / rel.file
    expected = (pinned or rel.sha256 or recorded or "").lower() or None
    if raw.is_file():  # a file of an earlier pull whose checkpoint was deleted
        digest = sha256_file(raw)
        _verify_or_remove(raw, digest, expected, rel.sha256_prefix)
    else:
        digest = download(url, raw, sha256=expected, sha256_prefix=rel.sha256_prefix, page=rel.page,
                          progress=progress)
    try:
        convert_official(raw, rel.model, rel.source, out, meta_extra={"source_url": url, "source_sha256": digest})
    except BaseException:
        raw.unlink(missing_ok=True)
        part_path(raw).unlink(missing_ok=True)
        raise
    how = ("pinned (--sha256)" if pinned else "published sha256" if rel.sha256 else
           "recorded on first download" if recorded else
           "published prefix" if rel.sha256_prefix else "trust on first use")
    _record(rel.file, {"sha256": digest, "url": url, "model": rel.model, "source": rel.source,
                       "checkpoint": str(out), "verified": how})
    if not (pinned or rel.sha256 or recorded or rel.sha256_prefix):
        notify(f"{rel.file}: no full checksum is published; recorded sha256 {digest} in "
               f"{weights_dir() / MANIFEST} (later pulls must match it)")
    return out


def _verify_or_remove(raw: Path, digest: str, sha256: str | None, prefix: str | None) -> None:
    try:
        check_digest(raw.name, digest, sha256=sha256, sha256_prefix=prefix)
    except ChecksumError:
        raw.unlink(missing_ok=True)
        raise
