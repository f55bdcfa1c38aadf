"""A saved TensorRT engine directory registered as a model version, like the workflows' artifacts.

The directory's files (``model.engine``, its sidecar ``model.engine.json`` and whatever else the
export wrote beside them: the ONNX graph, ``export.json``, the calibration cache) become a logged
model of type ``engine`` with an ``MLmodel`` file whose ``python_function`` flavour loads it with
:mod:`detflow.predict.pyfunc` on the ``tensorrt`` backend, produced by a run ``register-NAME``. The
new version carries lineage tags: ``detflow.source`` (what was exported), ``detflow.upstream_version``
(``NAME/VERSION`` when the source was a registered version ``models:/…``) and the engine's build
facts (precision, GPU, compute capability, TensorRT, ONNX digest).

Example::

    from detflow.predict.register import register_engine
    version = register_engine("out/engine", "coco_tiny", source="models:/coco_tiny@champion")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import tracking
from ..export.engine_artifact import read_engine_sidecar
from . import pyfunc

__all__ = ["register_engine", "engine_tags"]


def engine_tags(info: dict[str, Any], source: str | None) -> dict[str, str]:
    """The version tags of an engine with sidecar ``info`` exported from ``source``."""
    env = info.get("environment") or {}
    tags = {"detflow.formats": "engine", "detflow.engine.precision": str(info["precision"]),
            "detflow.engine.gpu": str(env.get("gpu_name")),
            "detflow.engine.compute_capability": str(env.get("compute_capability")),
            "detflow.engine.tensorrt": str(env.get("tensorrt")),
            "detflow.engine.onnx_sha256": str((info.get("onnx") or {}).get("sha256"))}
    if info.get("int8_method"):
        tags["detflow.engine.int8_method"] = str(info["int8_method"])
    if source:
        tags["detflow.source"] = source
    if source and source.startswith("models:/"):
        from ..tracking.registry import model_version_label

        tags["detflow.upstream_version"] = model_version_label(source)
    return tags


def register_engine(folder: str | os.PathLike, name: str, *, source: str | None = None,
                    experiment: str = "detflow-export", alias: str | None = None) -> str:
    """Register the engine directory ``folder`` as a new version of ``name`` (see the module
    docstring); its version number. Refuses (UserInputError) a folder without a valid sidecar."""
    folder = Path(folder)
    info = read_engine_sidecar(folder)
    tags = engine_tags(info, source)
    tracking.configure()
    run = tracking.Run.create(f"register-{name}", experiment=experiment, tags={"detflow.kind": "register"})
    try:
        params = {"precision": info["precision"], "profile": info["profile"],
                  "workspace_bytes": info["workspace_bytes"], "source": source or ""}
        model_id = tracking.log_logged_model(
            run, f"{name}-engine", folder, model_type="engine", params=params, tags=tags,
            pyfunc={"loader_module": pyfunc.LOADER_MODULE, "model_config": {"backend": pyfunc.backend_for("engine")}})
        version = run.register_model(name, tags=tags, alias=alias, model_id=model_id)
        run.set_tags({"detflow.registered_model": f"{name}/{version}"})
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    return version
