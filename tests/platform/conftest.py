"""Fixtures shared by the platform tests that need a real local Ray."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs) with DETFLOW_HOME in a temporary directory; yields that home.

    Files with their own ``ray_session`` (the workflow tests) override this one."""
    home = tmp_path_factory.mktemp("detflow_home")
    os.environ.update(DETFLOW_HOME=str(home), MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
                      RAY_AUTH_MODE="disabled")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield home
    if started:
        ray.shutdown()
