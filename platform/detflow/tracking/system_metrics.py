"""MLflow system metrics of a training run: CPU, memory, disk, network and, where a GPU exists,
GPU utilisation and memory, sampled in a background thread by MLflow's ``SystemMetricsMonitor``
and logged as ``system/...`` metrics (the run page's "System metrics" charts).

One monitor per node: the run's rank 0 logs the node's metrics with ``node_id=None`` on a single
node, and each node's local rank 0 logs with ``node_id="node<i>"`` where there are several (MLflow
then prefixes the keys ``system/node<i>/...``). Beside them, :func:`throughput_metrics` gives the
training loop's data-wait fraction and images/s under ``system/detflow/...``.

Example::

    from detflow import tracking
    monitor = tracking.start_system_metrics(run_id, interval_s=10)
    ...  # train
    tracking.stop_system_metrics(monitor)
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

__all__ = ["start_system_metrics", "stop_system_metrics", "throughput_metrics", "DEFAULT_INTERVAL_S"]

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_S = 10.0
_THROUGHPUT = {"train/data_wait_fraction": "system/detflow/data_wait_fraction",
               "train/images_per_s": "system/detflow/images_per_s"}


def _have_psutil() -> bool:
    """MLflow's monitors need ``psutil`` (a dependency of detflow; an image without it logs no system metrics)."""
    try:
        import psutil  # noqa: F401
        return True
    except ImportError:
        return False


def start_system_metrics(run_id: str, *, node_id: str | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                         resume: bool = True) -> Any:
    """A started monitor logging system metrics of this machine to ``run_id`` every ``interval_s``
    seconds (continuing the step count of a resumed run), or ``None`` with a warning when it cannot
    start (no psutil): system metrics never fail a training run."""
    if not _have_psutil():
        log.warning("system metrics off: psutil is not installed")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from .store import configure

    import psutil

    psutil.cpu_percent()  # its first call in a process says 0: the monitor's first sample would
    try:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                       resume_logging=resume, node_id=node_id, tracking_uri=configure())
        monitor.start()
    except Exception as exc:  # noqa: BLE001 — best effort, like MLflow's own autostart
        log.warning("system metrics off: %s", exc)
        return None
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    """Stop ``monitor`` (from :func:`start_system_metrics`; ``None`` is fine); a run shorter than one
    sampling interval still gets one sample (MLflow's monitor would log none)."""
    if monitor is None:
        return
    try:
        monitor.finish()
        if monitor._logging_step == 0:  # a run shorter than one interval: publish what was sampled
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
    except Exception as exc:  # noqa: BLE001 — the run's work is done: a lost last sample is fine
        log.warning("system metrics: %s", exc)


def throughput_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The loop's ``train/data_wait_fraction`` and ``train/images_per_s`` again as
    ``system/detflow/data_wait_fraction`` and ``system/detflow/images_per_s`` (shown with the system charts)."""
    return {new: float(metrics[old]) for old, new in _THROUGHPUT.items()
            if isinstance(metrics.get(old), (int, float)) and not isinstance(metrics.get(old), bool)}
