"""Tracking over MLflow: embedded SQLite store by default, run context, params, metrics and plots.

See :mod:`detflow.tracking.runs` for an example.
"""
from .fingerprint import count_images, dataset_fingerprint
from .runs import (flatten_params, is_secret_key, log_best, log_config, log_figure, log_metrics,
                   log_run_context, plot_curves, redact, remembered_parent_run, start_run)
from .store import artifact_root, configure, ensure_experiment, redact_url, uses_embedded_store

__all__ = [
    "configure", "artifact_root", "ensure_experiment", "uses_embedded_store", "redact_url",
    "start_run", "remembered_parent_run", "log_config", "log_run_context", "log_metrics", "log_best", "log_figure",
    "plot_curves", "flatten_params", "redact", "is_secret_key", "dataset_fingerprint", "count_images",
]
