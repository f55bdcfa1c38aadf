"""Where the tests' temporary files go, so that a full run stays within a CI machine's disk.

pytest (``tmp_path_retention_policy = "failed"``) deletes a passing test's ``tmp_path`` at its
teardown. Directories made with ``tmp_path_factory.mktemp`` by module fixtures are deleted when
their module ends (``tests/conftest.py``). A directory that must outlive its module (a session or
package fixture's: a server's data, a Ray session's home) is made with :func:`lasting_dir`.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

LASTING = "lasting"
LASTING_ENV: dict[str, str] = {}  # what session fixtures export into os.environ for the whole run


def lasting_dir(tmp_path_factory, name: str) -> Path:
    """A new directory ``<basetemp>/lasting/<name>…`` that the per-module cleanup leaves alone."""
    root = tmp_path_factory.getbasetemp() / LASTING
    root.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=name, dir=root))


def restore_tracking_uri(before: str | None) -> None:
    """Put MLflow's tracking URI (its global and ``MLFLOW_TRACKING_URI``) back to ``before``: a test
    or fixture that called ``mlflow.set_tracking_uri`` / ``tracking.configure`` would otherwise point
    every later in-process run at its store, which may be deleted by then."""
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
