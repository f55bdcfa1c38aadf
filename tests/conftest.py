"""Fixtures for the whole suite: each module's temporary directories are deleted when it ends."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from scratch import LASTING, LASTING_ENV, restore_tracking_uri  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _module_scratch_is_freed(request, tmp_path_factory):
    """Delete what this module's fixtures made under pytest's basetemp once the module is done (the
    full suite writes tens of GB of checkpoints, logged models and datasets otherwise). Kept when a
    test of the module failed, for inspection; :func:`scratch.lasting_dir` directories are kept."""
    root = tmp_path_factory.getbasetemp()
    before = {p.name for p in root.iterdir()}
    failed = request.session.testsfailed
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != LASTING_ENV.get("MLFLOW_TRACKING_URI"):
        restore_tracking_uri(tracking_uri)  # a module fixture's store is not the next module's
    if request.session.testsfailed != failed:
        return
    for path in root.iterdir():
        if path.name not in before and path.name != LASTING:
            shutil.rmtree(path, ignore_errors=True)
