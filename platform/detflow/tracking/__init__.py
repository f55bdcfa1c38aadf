"""Tracking over MLflow, the only package that imports it: :class:`Run` (a run by id: metrics,
params, tags, artifacts, figures, child runs; retried with backoff and jitter), per-epoch metrics
that survive an outage (:class:`EpochMetrics`), the store (embedded SQLite by default), and the
fluent helpers of a driver's active run (:func:`start_run`, :func:`log_config` …), and the
MLflow-native entities the UI shows: dataset inputs (:mod:`.datasets`), logged models
(:mod:`.logged_models`), descriptions and source tags (:mod:`.describe`), system metrics
(:mod:`.system_metrics`).

See :mod:`detflow.tracking.run` and :mod:`detflow.tracking.runs` for examples.
"""
from ..redact import is_secret_key, redact, redact_url
from .datasets import dataset_entity, dataset_name, dataset_profile, log_datasets
from .describe import readable_tags, step_description, train_description
from .fingerprint import annotation_hash, count_images, dataset_fingerprint
from .logged_models import log_logged_model, write_pyfunc_mlmodel
from .run import NO_RETRY, RetryPolicy, Run, TrackingUnavailable, numeric_metrics, search_runs
from .runs import (active_run, flatten_params, log_best, log_config, log_figure, log_metrics, log_run_context,
                   plot_curves, remembered_parent_run, start_run)
from .spool import EpochMetrics, MetricSpool, spool_file, worker_run
from .system_metrics import start_system_metrics, stop_system_metrics, throughput_metrics
from .store import artifact_root, configure, ensure_experiment, uses_embedded_store

__all__ = [
    "configure", "artifact_root", "ensure_experiment", "uses_embedded_store", "redact_url",
    "Run", "RetryPolicy", "NO_RETRY", "TrackingUnavailable", "numeric_metrics", "search_runs",
    "EpochMetrics", "MetricSpool", "spool_file", "worker_run",
    "start_run", "active_run", "remembered_parent_run", "log_config", "log_run_context", "log_metrics", "log_best",
    "log_figure", "plot_curves", "flatten_params", "redact", "is_secret_key", "dataset_fingerprint", "count_images",
    "annotation_hash", "dataset_entity", "dataset_name", "dataset_profile", "log_datasets",
    "readable_tags", "step_description", "train_description", "log_logged_model",
    "write_pyfunc_mlmodel",
    "start_system_metrics", "stop_system_metrics", "throughput_metrics",
]
