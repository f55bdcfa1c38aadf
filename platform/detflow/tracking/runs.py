"""Runs over MLflow: start/nest/resume, config params without secrets, run context, metrics, plots.

Example::

    from detflow import tracking
    with tracking.start_run("rtmdet-tiny", experiment="detflow") as run:
        tracking.log_config(cfg)                       # config.yaml artifact + flattened params
        tracking.log_run_context(seed=0, dataset=("val.json", "images/"))
        for epoch in range(1, 4):
            metrics = {"AP": 0.1 * epoch, "loss": 1.0 / epoch}
            tracking.log_metrics(metrics, step=epoch)
            tracking.log_best(metrics)                 # best/AP (max), best/loss (min)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import RuntimeFailure, UserInputError
from ..redact import REDACTED, SAFE_KEYS, is_secret_key, redact, redact_url  # noqa: F401  (re-exported)
from .fingerprint import count_images, dataset_fingerprint
from .run import Run, numeric_metrics
from .store import configure, ensure_experiment

__all__ = [
    "start_run", "log_config", "log_run_context", "log_metrics", "log_best", "log_figure",
    "plot_curves", "flatten_params", "redact", "is_secret_key", "REDACTED", "MAX_PARAMS",
    "remembered_parent_run", "active_run",
]

MAX_PARAMS = 200
MAX_PARAM_CHARS = 500


# --------------------------------------------------------------------------- runs
@contextlib.contextmanager
def start_run(name: str, *, experiment: str = "detflow", tags: Mapping[str, Any] | None = None,
              parent_run_id: str | None = None, run_id: str | None = None) -> Iterator[Any]:
    """Context manager yielding an active ``mlflow.ActiveRun``.

    Args:
        name: run name shown in the UI.
        experiment: experiment name (created with the embedded artifact root on first use).
        tags: extra tags (values redacted like params); ``mlflow.runName`` there overrides ``name``.
        parent_run_id: nest under this run (it may live in another process); defaults to the
            currently active run, if any.
        run_id: resume this run instead of creating one (``name`` and ``experiment`` are ignored).

    The run ends FINISHED, FAILED on an exception, KILLED on KeyboardInterrupt.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    configure()
    client = MlflowClient()
    active = mlflow.active_run()
    clean_tags = {k: str(v) for k, v in redact(dict(tags or {})).items()}
    if run_id is not None:
        try:
            client.get_run(run_id)
        except Exception:
            raise UserInputError(f"run_id {run_id}: no such MLflow run in {redact_url(mlflow.get_tracking_uri())}") from None
    else:
        exp_id = ensure_experiment(experiment)
        parent = parent_run_id or (active.info.run_id if active else None)
        if parent:
            clean_tags["mlflow.parentRunId"] = parent
        # a caller-chosen display name (e.g. a sweep trial's values) wins over ``name``
        run_name = clean_tags.pop("mlflow.runName", name)
        run_id = client.create_run(exp_id, run_name=run_name, tags=clean_tags).info.run_id
    run = mlflow.start_run(run_id=run_id, nested=active is not None)
    if clean_tags:
        mlflow.set_tags({k: v for k, v in clean_tags.items() if k != "mlflow.parentRunId"})
    status = "FINISHED"
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        _end_active_run(status)


def _end_active_run(status: str) -> None:
    """``mlflow.end_run(status)`` (which leaves the run inactive in this process first), its
    ``set_terminated`` retried through an outage; when the store stays down the run is left RUNNING
    with a warning: the work it tracked is done, and that must not fail it."""
    import logging

    import mlflow

    from .run import RetryPolicy, TrackingUnavailable

    active = mlflow.active_run()
    if active is None:
        return
    try:
        mlflow.end_run(status=status)
        return
    except Exception:  # noqa: BLE001 — retried below with the run's id
        pass
    try:
        Run(active.info.run_id, policy=RetryPolicy(attempts=6, max_delay_s=10.0)).end(status)
    except TrackingUnavailable as exc:
        logging.getLogger(__name__).warning("%s", exc)


def active_run() -> Run:
    """The run :func:`start_run` made active in this process, as a :class:`~detflow.tracking.Run`."""
    return Run(_run_id())


def _run_id() -> str:
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeFailure("no active MLflow run: call detflow.tracking.start_run(...) first")
    return run.info.run_id


# --------------------------------------------------------------------------- config + secrets
def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": "1", "c": "[1, 2]"}`` (values as MLflow strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, dotted + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[dotted] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def _config_dict(cfg: Any) -> dict:
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"log_config expects a pydantic config or a mapping, got {type(cfg).__name__}")


def log_config(cfg: Any, name: str = "config.yaml", *, max_params: int = MAX_PARAMS) -> dict[str, str]:
    """Log ``cfg`` as a YAML artifact ``name`` and as flattened params (secrets redacted).

    At most ``max_params`` params are logged (tag ``detflow.params_truncated`` says how many were
    dropped; the artifact is always complete). On a resumed run, params already logged are kept;
    keys whose value changed are listed in tag ``detflow.params_changed_on_resume``.
    Returns the params logged.
    """
    import mlflow
    import yaml
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    run_id = _run_id()
    data = redact(_config_dict(cfg))
    mlflow.log_text(yaml.safe_dump(data, sort_keys=False), name)
    params = flatten_params(data)
    if len(params) > max_params:
        mlflow.set_tag("detflow.params_truncated", f"logged {max_params} of {len(params)}")
        params = dict(list(params.items())[:max_params])
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    changed = [k for k, v in params.items() if k in existing and existing[k] != v]
    if changed:
        mlflow.set_tag("detflow.params_changed_on_resume", ",".join(changed[:20]))
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i: i + 100])
    return params


# --------------------------------------------------------------------------- context tags
def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        proc = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _hardware() -> dict[str, str]:
    """CPU/GPU summary without host names."""
    import platform as _platform

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "hardware.cpu_count": str(os.cpu_count() or 0),
        "hardware.machine": _platform.machine() or "unknown",
        "hardware.gpu_count": str(gpus),
        "hardware.gpu": torch.cuda.get_device_name(0) if gpus else "none",
        "hardware.cuda": str(torch.version.cuda or "none"),
    }


def _dataset_paths(dataset: Any) -> tuple[Any, Any]:
    if hasattr(dataset, "annotations") and hasattr(dataset, "images"):
        return dataset.annotations, dataset.images
    annotations, images = dataset
    return annotations, images


def log_run_context(*, seed: int | None = None, dataset: Any = None) -> dict[str, str]:
    """Tag the active run with what reproduces it; returns the tags.

    Tags: ``detflow.git_commit`` / ``detflow.git_dirty`` (also ``mlflow.source.git.commit``),
    ``detflow.version``, ``python.version``, ``torch.version``, ``ray.version``, ``mlflow.version``,
    ``hardware.*`` (CPU count, machine, GPU name/count, CUDA), ``seed``, and, when ``dataset`` is
    ``(annotations, images_dir)`` (or a ``DatasetSplit``), ``dataset.fingerprint`` / ``dataset.images``.
    """
    import mlflow

    from ..version import __version__

    _run_id()
    tags: dict[str, str] = {
        "detflow.version": __version__, "python.version": sys.version.split()[0],
        "torch.version": _version("torch"), "ray.version": _version("ray"), "mlflow.version": _version("mlflow"),
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags.update({"detflow.git_commit": commit, "mlflow.source.git.commit": commit,
                     "detflow.git_dirty": str(bool(status)).lower()})
    tags.update(_hardware())
    if seed is not None:
        tags["seed"] = str(seed)
    if dataset is not None:
        annotations, images = _dataset_paths(dataset)
        tags["dataset.fingerprint"] = dataset_fingerprint(annotations, images)
        tags["dataset.annotations"] = redact_url(str(annotations))
        tags["dataset.images"] = str(count_images(images))
    mlflow.set_tags(tags)
    return tags


# --------------------------------------------------------------------------- metrics
def log_metrics(metrics: Mapping[str, Any], step: int) -> dict[str, float]:
    """Log numeric ``metrics`` at ``step`` (epoch); strings (e.g. ``note``) are skipped. Returns them."""
    import mlflow

    _run_id()
    values = numeric_metrics(metrics)
    if values:
        mlflow.log_metrics(values, step=step)
    return values


def _default_mode(key: str) -> str:
    """``min`` for losses, times and latencies; ``max`` for everything else (AP, AR, accuracy …)."""
    k = key.lower()
    return "min" if "loss" in k or k.endswith(("time", "time_s", "_sec", "latency", "latency_ms", "_ms")) else "max"


def log_best(metrics: Mapping[str, Any], mode_for: Callable[[str], str] | Mapping[str, str] | None = None,
             *, step: int | None = None, model_id: str | None = None) -> dict[str, float]:
    """Update ``best/<key>`` summary metrics of the active run where ``metrics`` improve on them.

    ``mode_for`` maps a key to ``"max"`` or ``"min"`` (callable or dict); the default is ``min`` for
    losses and times, ``max`` otherwise. Values that are not finite are ignored. With ``model_id``
    the bests are attached to that logged model (the model page shows them). Returns the bests
    that changed.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    run_id = _run_id()
    current = MlflowClient().get_run(run_id).data.metrics
    improved = {}
    for key, value in numeric_metrics(metrics).items():
        if not math.isfinite(value):
            continue
        if callable(mode_for):
            mode = mode_for(key)
        else:
            mode = (mode_for or {}).get(key) or _default_mode(key)
        if mode not in ("max", "min"):
            raise ValueError(f"mode for {key!r} must be 'max' or 'min', got {mode!r}")
        best = current.get(f"best/{key}")
        if best is None or (value > best if mode == "max" else value < best):
            improved[f"best/{key}"] = value
    if improved:
        mlflow.log_metrics(improved, step=step, model_id=model_id)
    return {k.removeprefix("best/"): v for k, v in improved.items()}


# --------------------------------------------------------------------------- figures
def log_figure(fig: Any, artifact_file: str) -> None:
    """Save a matplotlib figure as an artifact of the active run (e.g. ``plots/curves.png``)."""
    import mlflow

    _run_id()
    mlflow.log_figure(fig, artifact_file)


def plot_curves(history: Sequence[Mapping[str, Any]], keys: Sequence[str], *, title: str | None = None):
    """A matplotlib ``Figure`` with one panel per key: value against epoch.

    ``history`` is a list of per-epoch dicts; the x value is each dict's ``epoch`` (else 1, 2, …).
    Keys missing from every entry get an empty panel titled "(no data)".
    """
    from matplotlib.figure import Figure

    keys = list(keys)
    ncols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = Figure(figsize=(4 * ncols, 3 * nrows))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        points = [(h.get("epoch", j + 1), h[key]) for j, h in enumerate(history)
                  if isinstance(h.get(key), (int, float)) and not isinstance(h.get(key), bool)]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3)
        ax.set(title=key if points else f"{key} (no data)", xlabel="epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def remembered_parent_run(state: Path, cfg, *, kind: str, resume: bool, extra: Mapping[str, Any] | None = None) -> str:
    """The MLflow parent run of a search (``kind`` = sweep | nas), created once and remembered.

    On ``resume`` the id stored in ``state`` (a JSON file) is returned; otherwise a parent run named
    ``cfg.name`` is created with ``cfg`` logged as ``KIND.yaml``, and its id is written to ``state``
    together with ``extra`` (e.g. the config, to find it again by name).
    """
    import time

    if resume and state.exists():
        from ..atomic import CorruptStateError, read_json_state

        hint = f"delete {state.parent} to start the {kind} afresh"
        parent = read_json_state(state, f"{kind} state", hint).get("parent_run_id")
        if not isinstance(parent, str):
            raise CorruptStateError(f"{state}: corrupt {kind} state (no parent_run_id); {hint}")
        return parent
    configure()
    from .describe import readable_tags

    tags = {**readable_tags(f"{kind} {cfg.name}: the parent run of its trials", source=f"detflow {kind} {cfg.name}",
                            git_commit=_git("rev-parse", "HEAD")),
            f"detflow.{kind}": cfg.name, "detflow.kind": kind}
    with start_run(cfg.name, tags=tags) as run:
        log_config(cfg, name=f"{kind}.yaml")
        run_id = run.info.run_id
    from ..atomic import atomic_write

    atomic_write(state, json.dumps({"parent_run_id": run_id, "created": time.time(), **dict(extra or {})}))
    return run_id
