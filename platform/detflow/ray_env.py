"""Starting or joining Ray the same way everywhere (train, sweeps, workflows)."""
from __future__ import annotations

import os

__all__ = ["RAY_ENV_DEFAULTS", "apply_ray_env_defaults", "init_ray"]

# Environment every Ray process we start inherits. Train V2's worker-group start timeout (60 s by
# default) is too short where workers import torch on a loaded 2-core machine: give it 10 minutes.
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
}


def apply_ray_env_defaults() -> None:
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def init_ray(address: str | None = None, *, num_cpus: int | None = None, **kwargs) -> bool:
    """``ray.init`` unless Ray is already initialised; returns True when this call started it.

    ``address`` (or ``RAY_ADDRESS``) joins a cluster; otherwise a local Ray is started.
    """
    import ray

    if ray.is_initialized():
        return False
    apply_ray_env_defaults()
    kwargs.setdefault("logging_level", "WARNING")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **kwargs)
    else:
        # The dashboard serves the State API that Ray Train's PlacementGroupCleaner polls: without it
        # a finished run's worker placement group is never released (trials then starve in a sweep).
        ray.init(num_cpus=num_cpus, include_dashboard=kwargs.pop("include_dashboard", True),
                 dashboard_host="127.0.0.1", **kwargs)
    return True
