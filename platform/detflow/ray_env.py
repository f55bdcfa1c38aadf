"""Starting or joining Ray the same way everywhere (train, sweeps, workflows)."""
from __future__ import annotations

import os

__all__ = ["RAY_ENV_DEFAULTS", "LOCAL_RAY_ENV_DEFAULTS", "RAY_TRAIN_QUIET_ENV", "RAY_TRAIN_LOG_LEVEL_ENV", "apply_ray_env_defaults",
           "init_ray", "quiet_ray_train_worker_logs", "ray_train_log_level", "release_finished_worker_groups",
           "worker_group_janitor"]

# Environment every Ray process we start inherits. Train V2's worker-group start timeout (60 s by
# default) is too short where workers import torch on a loaded 2-core machine: give it 10 minutes.
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
}

# Only for a local Ray that detflow starts itself: Train V2's preemption watcher follows node drains (spot
# instances being reclaimed), which a one-machine cluster never has; each run would start one more actor
# and print an "E … core_worker.cc … PreemptionWatcher … max_restarts > 0" line. Clusters keep it.
LOCAL_RAY_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

# Ray Train workers patch ``print`` to log through the root logger, which reaches the console even
# inside ``contextlib.redirect_stdout`` (pycocotools' "creating index…" then floods the output):
# keep the builtin print so that our redirects hold. Set in every Train worker's runtime env.
RAY_TRAIN_QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# Level of Ray Train's own ``ray.train`` console logs (RunConfig.logging_config). WARNING hides its
# per-report INFO lines ("Reporting training result", "Checkpoint successfully created", "Moving
# model to device", "Setting up process group" …) and keeps its warnings and errors.
RAY_TRAIN_LOG_LEVEL_ENV = "DETFLOW_RAY_TRAIN_LOG_LEVEL"


def ray_train_log_level() -> str:
    """``$DETFLOW_RAY_TRAIN_LOG_LEVEL`` (e.g. ``INFO`` to debug Ray Train), ``WARNING`` by default."""
    import logging

    from .errors import UserInputError

    level = os.environ.get(RAY_TRAIN_LOG_LEVEL_ENV, "WARNING").strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UserInputError(f"${RAY_TRAIN_LOG_LEVEL_ENV}: expected a log level (DEBUG, INFO, WARNING, ERROR), "
                             f"got {level!r}")
    return level


def quiet_ray_train_worker_logs() -> None:
    """In a Train worker: apply :func:`ray_train_log_level` to Ray Train's loggers that are named by
    file path (``logging.getLogger(__file__)``, e.g. the one printing "Reporting training result …"),
    which escape ``RunConfig.logging_config`` because their names are not under ``ray.train``."""
    import logging

    level = ray_train_log_level()
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(".py") and "/ray/train/" in name.replace("\\", "/"):
            logging.getLogger(name).setLevel(level)


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
        for key, value in LOCAL_RAY_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        # The dashboard serves the State API that Ray Train's PlacementGroupCleaner polls: without it
        # a finished run's worker placement group is never released (trials then starve in a sweep).
        ray.init(num_cpus=num_cpus, include_dashboard=kwargs.pop("include_dashboard", True),
                 dashboard_host="127.0.0.1", **kwargs)
    return True


def release_finished_worker_groups() -> int:
    """Remove placement groups of Ray Train worker groups whose workers are all dead.

    With Ray 2.60, a finished or killed Train V2 run inside a long-lived driver (a Tune trial, a
    workflow step, a retry after a worker was OOM-killed) can leave its worker-group placement
    group CREATED after its controller exits, so its CPUs are never given back and the next run
    waits forever. A group is released only when every actor placed in it is dead, which never
    touches a running group. Returns how many were removed.
    """
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=10000,
                             filters=[("class_name", "=", "RayTrainWorker")])
    except Exception:  # the State API needs the dashboard; nothing to do without it
        return 0
    alive, dead = set(), set()
    for actor in actors:
        if actor.placement_group_id:
            (alive if actor.state != "DEAD" else dead).add(actor.placement_group_id)
    removed = 0
    table = ray.util.placement_group_table()
    for pg_id in dead - alive:
        if table.get(pg_id, {}).get("state") == "CREATED":
            ray.util.remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))
            removed += 1
    return removed


class worker_group_janitor:
    """Context manager: while a Train run is in flight, release dead runs' worker groups every few seconds."""

    def __init__(self, interval_s: float = 5.0):
        import threading

        self._done = threading.Event()
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._loop, daemon=True, name="detflow-pg-janitor")

    def _loop(self) -> None:
        while not self._done.wait(self._interval_s):
            release_finished_worker_groups()

    def __enter__(self) -> "worker_group_janitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
