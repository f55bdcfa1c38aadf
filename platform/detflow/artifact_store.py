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

from .errors import RuntimeFailure, UserInputError

__all__ = ["SCHEMES", "is_uri", "join", "filesystem", "exists", "is_dir", "list_dir", "list_files", "read_text", "write_text",
           "upload", "download", "materialize", "local_path", "clear_cache", "delete", "check_storage_url", "check_reachable",
           "basename"]

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

    from .storage import _pyarrow_s3, s3_settings, split_s3

    bucket, key = split_s3(uri)
    settings = s3_settings()
    if settings.endpoint:
        return _pyarrow_s3(settings), f"{bucket}/{key}".rstrip("/")
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    return fs, f"{bucket}/{key}".rstrip("/")


def _public(text: Any) -> str:
    from .storage import redact

    return redact(text)


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
    fs, path = filesystem(location)
    if not is_uri(str(location)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
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


def download(location: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy the file or directory at ``location`` to the local path ``local``; returns ``local``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    dest = Path(local)
    dest.parent.mkdir(parents=True, exist_ok=True)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise UserInputError(f"{_public(location)}: no such file or directory")
    if kind == pafs.FileType.Directory:  # copy_files creates no local parent directories itself
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            parent = posixpath.dirname(info.path)[len(path):].strip("/")
            (dest / parent).mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"download of {_public(location)} failed: {_public(exc)}") from None
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
    from .storage import s3_settings

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
