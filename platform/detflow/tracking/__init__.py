"""Tracking over MLflow, the only package that imports it: :class:`Run` (a run by id: metrics,
params, tags, artifacts, figures, child runs; retried with backoff and jitter), per-epoch metrics
that survive an outage (:class:`EpochMetrics`), the store (embedded SQLite by default), and the
fluent helpers of a driver's active run (:func:`start_run`, :func:`log_config` …).

See :mod:`detflow.tracking.run` and :mod:`detflow.tracking.runs` for examples.
"""
from ..redact import is_secret_key, redact, redact_url
from .fingerprint import count_images, dataset_fingerprint
from .run import NO_RETRY, RetryPolicy, Run, TrackingUnavailable, numeric_metrics, search_runs
from .runs import (active_run, flatten_params, log_best, log_config, log_figure, log_metrics, log_run_context,
                   plot_curves, remembered_parent_run, start_run)
from .spool import EpochMetrics, MetricSpool, spool_file, worker_run
from .store import artifact_root, configure, ensure_experiment, uses_embedded_store

__all__ = [
    "configure", "artifact_root", "ensure_experiment", "uses_embedded_store", "redact_url",
    "Run", "RetryPolicy", "NO_RETRY", "TrackingUnavailable", "numeric_metrics", "search_runs",
    "EpochMetrics", "MetricSpool", "spool_file", "worker_run",
    "start_run", "active_run", "remembered_parent_run", "log_config", "log_run_context", "log_metrics", "log_best",
    "log_figure", "plot_curves", "flatten_params", "redact", "is_secret_key", "dataset_fingerprint", "count_images",
]
