"""Durable local writes: every state, marker, sidecar, JSON, YAML, ONNX and checkpoint file detflow
writes goes through here, so a crash (SIGKILL, power loss) leaves either the old or the new content,
never a truncated file.

The recipe (the POSIX one; see e.g. "Files are hard", Pillai et al., OSDI '14, §2): write a temporary
file in the *same* directory, ``fsync`` it, ``os.replace`` it onto the final name (atomic within one
filesystem), then ``fsync`` the directory so the rename itself survives a power cut. Temporary names
start with :data:`TEMP_PREFIX`; readers and listings skip them and :func:`remove_temps` cleans them up.

A leaf module: it imports only the standard library and :mod:`detflow.errors`. Object-store
locations (``s3://``) are written through :mod:`detflow.artifact_store`, where one ``PUT`` is atomic.

Example::

    from detflow.atomic import atomic_write, atomic_path, read_json_state
    atomic_write("state/sweep.json", json.dumps(state))          # str or bytes
    with atomic_path("out/model.onnx") as tmp:                    # for writers that take a path
        torch.onnx.export(model, args, str(tmp))
    state = read_json_state("state/sweep.json", "sweep state", "delete it to start the sweep afresh")
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import UserInputError

__all__ = ["TEMP_PREFIX", "is_temp", "temp_sibling", "fsync_dir", "atomic_write", "atomic_write_json",
           "atomic_write_yaml", "atomic_path", "atomic_dir", "swap_dirs", "remove_temps", "read_json_state",
           "mkdir_exclusive", "CorruptStateError"]

TEMP_PREFIX = ".tmp-"


class CorruptStateError(UserInputError):
    """A state or marker file that is truncated, not JSON, or not the expected shape (exit 2)."""


def is_temp(name: str | os.PathLike) -> bool:
    """Whether a file or directory name is one of this module's temporaries (or a checkpoint's ``.old-``)."""
    return Path(name).name.startswith((TEMP_PREFIX, ".old-"))


def temp_sibling(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path``: ``DIR/.tmp-<random>-NAME`` (same filesystem; the suffix
    is kept for writers that look at it)."""
    path = Path(path)
    return path.parent / f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}"


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a directory so that renames and creations inside it are durable (no-op where the OS
    cannot open directories)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, the file written there is
    fsynced and renamed onto ``path`` (then the directory is fsynced). On an exception the temporary
    is removed and ``path`` is untouched. For writers that take a file name (``torch.save``,
    ``torch.onnx.export``, ``onnx.save``)."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the writer produced no file")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` (``str`` is UTF-8 encoded) to ``path`` atomically and durably; returns ``path``."""
    payload = data.encode() if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kw: Any) -> Path:
    """``atomic_write(path, json.dumps(obj, **dumps_kw))``."""
    return atomic_write(path, json.dumps(obj, **dumps_kw))


def atomic_write_yaml(path: str | os.PathLike, data: Any, *, sort_keys: bool = False) -> Path:
    """``atomic_write(path, yaml.safe_dump(data))``."""
    import yaml

    return atomic_write(path, yaml.safe_dump(data, sort_keys=sort_keys))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; when the block succeeds its files are fsynced and it
    replaces ``path`` (an existing directory is swapped out atomically, then deleted). On an exception
    the temporary directory is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _install_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def _install_dir(tmp: Path, path: Path) -> None:
    """Put directory ``tmp`` at ``path``: a plain rename when ``path`` is free, else an atomic swap
    (the old content then sits at ``tmp`` and is deleted)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    swap_dirs(tmp, path)
    shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def swap_dirs(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Exchange two existing directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``): a reader of
    ``b`` sees the old or the new content, never neither. Where the call is unavailable, ``b`` is
    moved aside and ``a`` renamed onto it (a short window with no ``b``)."""
    fn = _renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: fall back below
            raise OSError(err, os.strerror(err), str(b))
    aside = Path(b).parent / f".old-{Path(b).name}-{secrets.token_hex(4)}"
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)


def remove_temps(root: str | os.PathLike, *, older_than_s: float = 0.0) -> list[Path]:
    """Delete this module's leftover temporaries (files and directories) directly under ``root`` whose
    modification time is at least ``older_than_s`` seconds ago; returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    now, removed = time.time(), []
    for entry in root.iterdir():
        if not is_temp(entry.name):
            continue
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def mkdir_exclusive(path: str | os.PathLike) -> bool:
    """Create directory ``path`` (parents as needed); False when it already exists (another process
    got the name first). ``os.mkdir`` is atomic, so of two racing callers exactly one gets True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def read_json_state(path: str | os.PathLike, what: str, recover_hint: str, *, expect: type = dict) -> Any:
    """Parse the JSON state file ``path``; a missing, truncated or malformed one is a one-line
    :class:`CorruptStateError` (exit 2): ``FILE: corrupt WHAT (why); RECOVER_HINT``.

    Args:
        what: what the file is, e.g. ``"run marker"``, ``"sweep state"``.
        recover_hint: how to recover, e.g. ``"delete it and run without --resume"``.
        expect: the type the top-level value must have (``dict`` by default).
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise CorruptStateError(f"{path}: missing {what}; {recover_hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptStateError(f"{path}: unreadable {what} ({type(exc).__name__}); {recover_hint}") from None
    return parse_json_state(text, path, what, recover_hint, expect=expect)


def parse_json_state(text: str, path: str | os.PathLike, what: str, recover_hint: str, *, expect: type = dict) -> Any:
    """:func:`read_json_state` for text already read (e.g. from an object store)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        why = "empty file" if not text.strip() else f"invalid JSON at line {getattr(exc, 'lineno', '?')}"
        raise CorruptStateError(f"{path}: corrupt {what} ({why}, truncated write?); {recover_hint}") from None
    if not isinstance(value, expect):
        raise CorruptStateError(f"{path}: corrupt {what} (expected a JSON {expect.__name__}, got "
                                f"{type(value).__name__}); {recover_hint}")
    return value
