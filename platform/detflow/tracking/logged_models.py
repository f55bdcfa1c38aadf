"""Model artifacts as MLflow 3 logged models: what the runs table's **Models** column links to and
what a registered version's lineage points at.

Each checkpoint, ONNX, int8 or engine artifact a run produces becomes a logged model with the run
as its source (``source_run_id``) and as an output of the run, its files uploaded to the model's
own artifact location, its metrics (mAP, latency …) logged on the run with ``model_id`` so the model
page and the Models column show them (log a run's metrics once, with the ``model_id``:
:meth:`~detflow.tracking.Run.log_metrics` and :func:`~detflow.tracking.log_best` take it; logging
them again would add a second point to the run's metric history), and status ``READY``. A registered version made with
:meth:`~detflow.tracking.Run.register_model` ``(model_id=...)`` has source ``models:/<model_id>``.

Example::

    from detflow import tracking
    run = tracking.Run.create("train-a", experiment="demo")
    model_id = tracking.log_logged_model(run, "rtmdet_tiny-best", ["best/model.pt"], model_type="checkpoint",
                                         metrics={"val/bbox_mAP": 0.31}, params={"model": "rtmdet_tiny"})
    run.register_model("coco_tiny", model_id=model_id)

With ``pyfunc=`` (a loader module's name and its ``model_config``) the model's artifacts also hold
an ``MLmodel`` file with a ``python_function`` flavour next to the raw files, so
``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` and ``mlflow models serve`` load it; the
workflows pass ``detflow.predict.pyfunc`` (MLflow imports it by name: this low layer never imports
``detflow.predict``)::

    tracking.log_logged_model(run, "tiny-export", export_dir, model_type="onnx",
                              pyfunc={"loader_module": "detflow.predict.pyfunc",
                                      "model_config": {"backend": "onnxruntime"}})
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..redact import redact
from .run import Run

__all__ = ["log_logged_model", "write_pyfunc_mlmodel", "MODEL_TYPES"]

MODEL_TYPES = ("checkpoint", "onnx", "int8", "engine")


def write_pyfunc_mlmodel(folder: str | Path, loader_module: str, model_config: Mapping[str, Any] | None = None,
                         *, model_id: str | None = None) -> Path:
    """An ``MLmodel`` file in ``folder`` whose ``python_function`` flavour loads ``folder`` itself
    with ``loader_module._load_pyfunc(folder, model_config)``; its path."""
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    model = Model(model_id=model_id) if model_id else Model()
    add_to_model(model, loader_module=loader_module, model_config=dict(model_config or {}) or None)
    path = Path(folder) / "MLmodel"
    model.save(str(path))
    return path


def _upload(run: Run, model_id: str, files: Sequence[str | Path] | str | Path,
            pyfunc: Mapping[str, Any] | None = None) -> None:
    """The files (or one directory's files) as the logged model's artifacts, with an ``MLmodel``
    file when ``pyfunc`` is given."""
    client = run.client
    if isinstance(files, (str, Path)) and Path(files).is_dir() and not pyfunc:
        run._call(f"upload model {model_id}", lambda: client.log_model_artifacts(model_id, str(files)))
        return
    if isinstance(files, (str, Path)) and Path(files).is_dir():
        paths = sorted(Path(files).iterdir())
    else:
        paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="detflow-model-") as tmp:
        for path in paths:
            target = Path(tmp) / path.name
            shutil.copytree(path, target) if path.is_dir() else shutil.copy2(path, target)
        if pyfunc:
            write_pyfunc_mlmodel(tmp, pyfunc["loader_module"], pyfunc.get("model_config"), model_id=model_id)
        run._call(f"upload model {model_id}", lambda: client.log_model_artifacts(model_id, tmp))


def log_logged_model(run: Run, name: str, files: Sequence[str | Path] | str | Path, *, model_type: str,
                     metrics: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
                     tags: Mapping[str, Any] | None = None, step: int = 0,
                     pyfunc: Mapping[str, Any] | None = None) -> str:
    """A READY logged model ``name`` of ``model_type`` (one of :data:`MODEL_TYPES`) holding ``files``
    (paths, or a directory), produced by ``run`` (its source and an output of it), with ``metrics``
    (when given) logged on the run at ``step`` attached to it, ``params`` / ``tags`` redacted, and
    with ``pyfunc`` (``{"loader_module": …, "model_config": {…}}``) an ``MLmodel`` file (see the
    module docstring). Returns its ``model_id``."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    client = run.client
    exp_id = run.info().experiment_id
    clean_params = {k: str(v)[:500] for k, v in redact(dict(params or {})).items()}
    clean_tags = {k: str(v) for k, v in redact({"detflow.model_type": model_type, **dict(tags or {})}).items()}
    model = run._call(f"create model {name}", lambda: client.create_logged_model(
        exp_id, name=name, source_run_id=run.run_id, tags=clean_tags, params=clean_params, model_type=model_type))
    try:
        _upload(run, model.model_id, files, pyfunc)
        if metrics:
            run.log_metrics(step, metrics, model_id=model.model_id)
        run._call("log outputs", lambda: client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step)]))
    except BaseException:
        run._call("fail model", lambda: client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED))
        raise
    run._call("finalize model", lambda: client.finalize_logged_model(model.model_id, LoggedModelStatus.READY))
    return model.model_id
