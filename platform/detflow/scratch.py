"""Scratch directories that a killed process does not leak.

A training worker stages each epoch's checkpoint in a scratch directory, and a workflow step runs in
one. ``tempfile.TemporaryDirectory`` removes its directory only when the process lives to leave the
``with`` block; a worker that ASHA stops, a node that loses a process to the OOM killer or a SIGKILL
leaves it behind, and a long sweep fills the node's ``/tmp`` (tens of MB per stopped trial).

Here each process's scratch lives under ``<tmp>/detflow-scratch/<host>-<pid>/``, and opening a new
one first removes the folders of this host's processes that no longer exist. The host part (a hash
of the hostname) keeps containers that share a ``/tmp`` but not a PID namespace off each other's
folders.

Example::

    from detflow.scratch import scratch_dir
    with scratch_dir("ckpt") as tmp:   # Path, removed on exit (or by the next process, if killed)
        ...
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["scratch_dir", "remove_stale"]


def _root() -> Path:
    return Path(tempfile.gettempdir()) / "detflow-scratch"


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders of this host's processes that have ended; returns them."""
    root = root or _root()
    removed = []
    for owner in root.glob(f"{_host()}-*"):
        pid = owner.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(owner, ignore_errors=True)
            removed.append(owner)
    return removed


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A new empty directory for this process, removed when the block ends; stale folders of ended
    processes are removed first."""
    remove_stale()
    owner = _root() / f"{_host()}-{os.getpid()}"
    owner.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=owner))
    try:
        yield path.resolve()
    finally:
        shutil.rmtree(path, ignore_errors=True)
