"""One storage layer for every artifact: a local path, a shared-filesystem path or an object-store
URL (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``), all through ``pyarrow.fs`` (the library Ray
Train itself stores checkpoints with). Paths are joined and split here, never with ``pathlib`` on
a URL.

Example::

    from detflow import artifact_store as store
    step = store.join("s3://team-runs/detflow", run_id, "train")   # "s3://team-runs/detflow/<run>/train"
    store.upload(scratch_dir, step)                                 # a directory or a file
    store.exists(store.join(step, "onnx", "model.onnx"))           # True
    local = store.materialize(store.join(step, "onnx", "model.onnx"))   # a local copy, cached per process

S3 endpoints and credentials come from the environment (see :mod:`detflow.storage`); nothing here
takes or logs a secret.
"""
from __future__ import annotations

import atexit
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import DetflowError, RuntimeFailure, UserInputError

__all__ = ["SCHEMES", "is_uri", "join", "filesystem", "exists", "is_dir", "list_dir", "list_files", "read_text", "write_text",
           "upload", "download", "key_path", "max_download_bytes", "materialize", "local_path", "clear_cache", "delete",
           "check_storage_url", "check_reachable", "basename"]

# Object stores pyarrow.fs reaches (``s3a`` is read as ``s3``); anything else is a local path.
SCHEMES = ("s3", "s3a", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_CREDENTIAL_NAMES = {
    "s3": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_PROFILE",), ("AWS_WEB_IDENTITY_TOKEN_FILE",),
           ("AWS_CONTAINER_CREDENTIALS_FULL_URI",), ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",)),
}


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://…`` (``file://`` excluded: it is a local path)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base`` with ``parts`` appended: ``/``-joined for a URL, an absolute local path otherwise."""
    text = str(base)
    if not is_uri(text):
        return str(Path(text.removeprefix("file://")).expanduser().joinpath(*parts))
    scheme, rest = text.split("://", 1)
    return f"{scheme}://{posixpath.join(rest.rstrip('/'), *(p.strip('/') for p in parts))}"


def basename(location: str | os.PathLike) -> str:
    return posixpath.basename(str(location).rstrip("/"))


def filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path in it)`` for ``location``.

    ``s3://bucket/key`` on a custom endpoint (``AWS_ENDPOINT_URL`` …, see :mod:`detflow.storage`) gets
    a path-style ``S3FileSystem`` on it; other URLs go through ``FileSystem.from_uri``.
    """
    import pyarrow.fs as pafs

    text = str(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser().resolve())
    scheme = _scheme(text)
    if scheme not in SCHEMES:
        raise UserInputError(f"{_public(text)}: unknown storage scheme {scheme!r}; expected a local path or one of "
                             f"{', '.join(s + '://' for s in SCHEMES)}")
    if scheme in ("s3", "s3a"):
        return _s3_filesystem(text)
    try:
        return pafs.FileSystem.from_uri(text)
    except Exception as exc:  # noqa: BLE001 — pyarrow raises ArrowInvalid/OSError for bad or unreachable URLs
        raise UserInputError(f"{_public(text)}: cannot open this storage: {_public(exc)}") from None


def _s3_filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    from .s3settings import _pyarrow_s3, s3_settings, split_s3

    bucket, key = split_s3(uri)
    settings = s3_settings()
    if settings.endpoint:
        return _pyarrow_s3(settings), f"{bucket}/{key}".rstrip("/")
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    return fs, f"{bucket}/{key}".rstrip("/")


def _public(text: Any) -> str:
    from .redact import redact_text

    return redact_text(text)


def _info(location: str) -> Any:
    fs, path = filesystem(location)
    try:
        return fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"cannot reach {_public(location)}: {_public(exc)}") from None


def exists(location: str | os.PathLike) -> bool:
    """True when a file or a directory (an object prefix) is at ``location``."""
    import pyarrow.fs as pafs

    return _info(str(location)).type != pafs.FileType.NotFound


def is_dir(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    return _info(str(location)).type == pafs.FileType.Directory


def list_dir(location: str | os.PathLike) -> list[str]:
    """Names directly under ``location`` (empty when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(basename(info.path) for info in fs.get_file_info(selector))


def list_files(location: str | os.PathLike) -> list[str]:
    """Paths of every file under ``location``, relative to it, recursively (empty when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    return sorted(info.path[len(path):].lstrip("/") for info in fs.get_file_info(selector)
                  if info.type == pafs.FileType.File)


def read_text(location: str | os.PathLike) -> str:
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        raise UserInputError(f"{_public(location)}: no such file") from None


def write_text(location: str | os.PathLike, text: str) -> None:
    """Write ``text`` at ``location``: a local file atomically and durably (:func:`detflow.atomic.atomic_write`),
    an object (one PUT, atomic by itself) through pyarrow.fs."""
    fs, path = filesystem(location)
    if not is_uri(str(location)):
        from .atomic import atomic_write

        atomic_write(path, text)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def upload(local: str | os.PathLike, location: str | os.PathLike) -> str:
    """Copy the local file or directory ``local`` to ``location`` (a directory's contents go under it);
    returns ``location``."""
    import pyarrow.fs as pafs

    src = Path(local)
    if not src.exists():
        raise UserInputError(f"{src}: nothing to upload")
    fs, path = filesystem(location)
    if not is_uri(str(location)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(str(src.resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"upload of {src} to {_public(location)} failed: {_public(exc)}") from None
    return str(location)


MAX_DOWNLOAD_ENV = "DETFLOW_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_DOWNLOAD_BYTES = 20 * 1024**3  # 20 GiB: far above any checkpoint or dataset a step reads


def max_download_bytes(env: dict[str, str] | None = None) -> int:
    """The most bytes one download may write: ``$DETFLOW_MAX_DOWNLOAD_BYTES`` (default 20 GiB)."""
    raw = (os.environ if env is None else env).get(MAX_DOWNLOAD_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_DOWNLOAD_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserInputError(f"{MAX_DOWNLOAD_ENV}={raw!r}: expected a positive number of bytes")
    return value


def key_path(key: str, dest: str | os.PathLike, location: str | os.PathLike = "") -> Path:
    """The local path under ``dest`` of the object ``key`` (relative to the prefix being downloaded):
    the one rule every download follows. A key that is not one clean relative path (``..`` or ``.``
    segments, a leading ``/``, empty segments as in ``a//b``, a NUL or a backslash) or whose target
    would resolve outside ``dest`` is a one-line ``UserInputError`` naming ``location``."""
    where = _public(location) if location else str(dest)
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or "\0" in key
            or any(part in ("", ".", "..") for part in parts)):
        raise UserInputError(f"{where}: object key {key!r} is not a clean relative path (no '..', '.', empty "
                             f"segments or leading '/'); refusing to download it")
    root = Path(dest).resolve()
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root):
        raise UserInputError(f"{where}: object key {key!r} resolves outside the destination {root}; "
                             f"refusing to download it")
    return target


def _too_big(location: str, cap: int) -> UserInputError:
    return UserInputError(f"{_public(location)}: more than {cap} bytes to download (the limit; raise it with "
                          f"{MAX_DOWNLOAD_ENV})")


def _copy_file(fs: Any, path: str, target: Path, budget: list[int], lock: Any, location: str) -> None:
    """Stream ``path`` into ``target``, charging every byte to ``budget[0]`` (shared, under ``lock``;
    ``budget[1]`` is the cap)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(target, "wb") as out:
        while True:
            chunk = src.read(8 << 20)
            if not chunk:
                return
            with lock:
                budget[0] -= len(chunk)
                over = budget[0] < 0
            if over:
                raise _too_big(location, budget[1])
            out.write(chunk)


def _move_into(src: Path, dest: Path) -> None:
    """Put the complete download ``src`` at ``dest``: a rename, or (``dest`` an existing directory) each
    entry renamed into it, files replacing files of the same name."""
    if not dest.exists() and not dest.is_symlink():
        os.replace(src, dest)
        return
    if src.is_dir() and dest.is_dir():
        for child in src.iterdir():
            _move_into(child, dest / child.name)
        return
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    os.replace(src, dest)


def download(location: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy the file or directory at ``location`` to the local path ``local``; returns ``local``.

    Every object key maps to a path inside ``local`` by :func:`key_path` (a key that does not is
    refused before anything is written), the total is capped by :func:`max_download_bytes`, and the
    copy is made in a temporary directory next to ``local`` and renamed into place only when
    complete: a failed download leaves nothing (an existing directory ``local`` receives the files)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.fs as pafs

    text = str(location)
    fs, path = filesystem(text)
    dest = Path(local)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"download of {_public(text)} failed: {_public(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise UserInputError(f"{_public(text)}: no such file or directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.part-", dir=dest.parent))
    try:
        if info.type == pafs.FileType.Directory:
            root = tmp / "d"
            root.mkdir()
            files = []
            for item in infos:
                if not item.path.startswith(path + "/"):
                    raise UserInputError(f"{_public(text)}: listed object {item.path!r} is not under it; "
                                         f"refusing to download it")
                target = key_path(item.path[len(path) + 1:], root, text)
                if item.type == pafs.FileType.Directory:
                    target.mkdir(parents=True, exist_ok=True)
                elif item.type == pafs.FileType.File:
                    files.append((item.path, target, item.size))
        else:
            root = tmp / "f"
            files = [(path, root, info.size)]
        cap = max_download_bytes()
        if sum(size or 0 for _, _, size in files) > cap:
            raise _too_big(text, cap)
        budget, lock = [cap, cap], threading.Lock()
        if len(files) == 1:
            _copy_file(fs, files[0][0], files[0][1], budget, lock, text)
        elif files:
            with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
                for future in [pool.submit(_copy_file, fs, src, target, budget, lock, text) for src, target, _ in files]:
                    future.result()
        _move_into(root, dest)
    except DetflowError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"download of {_public(text)} failed: {_public(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


_CACHE: dict[str, Path] = {}


def materialize(location: str | os.PathLike) -> Path:
    """A local path with the contents of ``location``: a local path is returned as is (it must exist);
    a URL is downloaded once per process into a temporary directory removed at exit (artifacts
    never change once their step has written them). A failed download leaves nothing behind."""
    text = str(location)
    if not is_uri(text):
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.exists():
            raise UserInputError(f"{path}: no such file or directory")
        return path
    cached = _CACHE.get(text)
    if cached is not None and cached.exists():
        return cached
    root = Path(tempfile.mkdtemp(prefix="detflow-artifact-"))
    try:
        dest = download(text, root / (basename(text) or "artifact"))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    if not _CACHE:
        atexit.register(clear_cache)
    _CACHE[text] = dest
    return dest


def local_path(location: str | os.PathLike | None) -> Path | None:
    """``materialize`` for URLs, ``Path`` for local paths (not checked), None for None: what a reader
    of a file that may live in object storage calls first."""
    if location is None:
        return None
    return materialize(location) if is_uri(str(location)) else Path(location)


def clear_cache() -> None:
    """Remove this process's downloaded copies (at exit, and when a step or a Train worker ends:
    Ray reuses worker processes, and kills Train workers without running ``atexit``)."""
    for path in _CACHE.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    _CACHE.clear()


def delete(location: str | os.PathLike) -> None:
    """Remove the file or directory at ``location`` (nothing when absent)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def check_storage_url(url: str, env: dict[str, str] | None = None) -> str | None:
    """Why ``url`` cannot work as a storage location (None when it can): unknown scheme, no bucket,
    no credential variables for a custom S3 endpoint. Names and values shown are never secrets."""
    from .s3settings import s3_settings

    if not is_uri(url):
        return None
    scheme = _scheme(url)
    if scheme not in SCHEMES:
        return f"unknown scheme {scheme!r}; expected a local path or one of {', '.join(s + '://' for s in SCHEMES)}"
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        return f"no bucket in {_public(url)!r}; expected {scheme}://BUCKET/PREFIX"
    env = os.environ if env is None else env
    if scheme in ("s3", "s3a") and s3_settings(env).endpoint:
        options = _CREDENTIAL_NAMES["s3"]
        if not any(all(env.get(name) for name in names) for names in options):
            return (f"the S3 endpoint {s3_settings(env).endpoint} needs credentials: set "
                    f"{' and '.join(options[0])} (or {', '.join(n[0] for n in options[1:])}) in the environment")
    return None


def check_reachable(url: str) -> str | None:
    """Why the object store at ``url`` cannot be used now (its bucket missing or unreachable); None
    when it can, and for local paths (created on first write)."""
    import pyarrow.fs as pafs

    if not is_uri(url):
        return None
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        kind = fs.get_file_info(bucket).type
    except Exception as exc:  # noqa: BLE001 — endpoint down, access denied …
        return f"cannot reach it: {_public(exc)}"
    return f"bucket {bucket!r} does not exist" if kind == pafs.FileType.NotFound else None
