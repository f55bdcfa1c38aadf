"""Where detflow keeps its state: ``$DETFLOW_HOME`` or ``./.detflow`` (MLflow store, runs, workflow DB)."""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["state_dir", "resolve_path", "check_run_id", "RUN_ID_PATTERN", "RUN_ID_MAX"]

# A run id names a directory under the state directory and a database row: the workflow name's
# pattern (detflow.workflows.schema.Workflow.name), at most the width of the ``runs.id`` column.
RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"  # matched whole (re.fullmatch)
RUN_ID_MAX = 64


def state_dir() -> Path:
    """The state directory (created on first use, mode 0700: it holds the workflow database, logs and
    the MLflow store; an existing directory keeps its mode)."""
    path = Path(os.environ.get("DETFLOW_HOME") or Path.cwd() / ".detflow").resolve()
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # created meanwhile by another process (a file there is an error)
            if not path.is_dir():
                raise
        else:
            os.chmod(path, 0o700)  # whatever the umask
    return path


def check_run_id(run_id: str, flag: str = "--run-id") -> str:
    """``run_id`` when it is a valid run id, else a one-line ``UserInputError`` (exit 2) naming ``flag``."""
    from .errors import UserInputError

    if not isinstance(run_id, str) or len(run_id) > RUN_ID_MAX or not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise UserInputError(f"{flag} {run_id!r}: expected at most {RUN_ID_MAX} letters, digits, '_', '.' or '-', "
                             f"starting with a letter or digit")
    return run_id


def resolve_path(path: str | os.PathLike, base: str | os.PathLike | None) -> Path:
    """``path`` as absolute, relative paths taken against ``base`` (a config file's directory)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute() or base is None:
        return p.resolve()
    return (Path(base) / p).resolve()
