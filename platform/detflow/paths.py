"""Where detflow keeps its state: ``$DETFLOW_HOME`` or ``./.detflow`` (MLflow store, runs, workflow DB)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["state_dir", "resolve_path"]


def state_dir() -> Path:
    """The state directory (created on first use)."""
    path = Path(os.environ.get("DETFLOW_HOME") or Path.cwd() / ".detflow").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_path(path: str | os.PathLike, base: str | os.PathLike | None) -> Path:
    """``path`` as absolute, relative paths taken against ``base`` (a config file's directory)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute() or base is None:
        return p.resolve()
    return (Path(base) / p).resolve()
