"""A registered version as an MLflow ``pyfunc`` model: the loader module its ``MLmodel`` names.

MLflow calls :func:`_load_pyfunc` with the version's artifact folder (a checkpoint, an fp32 ONNX
export, an int8 quantisation directory or a saved TensorRT engine directory, checked against this
GPU and TensorRT before loading, as :func:`detflow.predict.load_predictor` reads it) and
the ``model_config`` written at logging time (``backend``, ``score_thr``). This module never
imports MLflow (only ``detflow.tracking`` does): :func:`detflow.tracking.log_logged_model` writes
the ``MLmodel`` file naming :data:`LOADER_MODULE`, and MLflow imports it by name when loading.

``predict`` takes images as

* a pandas DataFrame with a ``path`` column (image files readable where the model runs) or an
  ``image`` column (base64-encoded PNG/JPEG bytes): what ``mlflow models serve`` gets from
  ``{"dataframe_records": [{"path": "a.jpg"}]}`` or ``{"dataframe_split": {"columns": ["image"], …}}``;
* a list of file paths, a list of ``H×W×3`` uint8 RGB arrays, or one ``N×H×W×3`` array;

and returns one dict per image: ``boxes`` (``[[x1, y1, x2, y2], …]`` in original pixels),
``scores``, ``labels`` (category ids), ``class_names`` and, for instance models on the ``torch``
backend, ``masks`` as COCO RLE (``{"size": [h, w], "counts": str}``).

Example::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/tiny@champion")
    dets = model.predict(pd.DataFrame({"path": ["street.jpg"]}))
    dets[0]["boxes"], dets[0]["class_names"]
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import UserInputError
from .detector import Predictor, load_predictor

__all__ = ["LOADER_MODULE", "DetectionModel", "backend_for", "to_arrays", "_load_pyfunc"]

LOADER_MODULE = __name__

_BACKENDS = {"checkpoint": "torch", "onnx": "onnxruntime", "int8": "onnxruntime", "engine": "tensorrt"}


def backend_for(model_type: str) -> str:
    """The backend a logged model of ``model_type`` serves on by default."""
    return _BACKENDS.get(model_type, "torch")


def _read(item: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[-1] != 3:
            raise UserInputError(f"pyfunc predict: an image array must be H×W×3 RGB, got shape {item.shape}")
        return np.ascontiguousarray(item.astype(np.uint8, copy=False))
    if isinstance(item, (bytes, bytearray)):
        with Image.open(io.BytesIO(item)) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise UserInputError(f"pyfunc predict: {str(item)!r}: no such image file")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(item, (list, tuple)):  # a nested list (JSON) of an H×W×3 image
        return _read(np.asarray(item, dtype=np.uint8))
    raise UserInputError(f"pyfunc predict: expected an image path, bytes or an H×W×3 array, got {type(item).__name__}")


def to_arrays(model_input: Any) -> list[np.ndarray]:
    """``H×W×3`` uint8 RGB arrays of ``model_input`` (see the module docstring for what it may be)."""
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # a pandas DataFrame
        if "path" in columns:
            return [_read(p) for p in model_input["path"].tolist()]
        if "image" in columns:
            return [_read(base64.b64decode(b) if isinstance(b, str) else b) for b in model_input["image"].tolist()]
        raise UserInputError(f"pyfunc predict: a DataFrame needs a 'path' or 'image' (base64) column, got {list(columns)}")
    if isinstance(model_input, Mapping):
        if "path" in model_input:
            return [_read(p) for p in _as_list(model_input["path"])]
        if "image" in model_input:
            return [_read(base64.b64decode(b) if isinstance(b, str) else b) for b in _as_list(model_input["image"])]
        raise UserInputError(f"pyfunc predict: expected a 'path' or 'image' key, got {sorted(model_input)}")
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 4:
            return [_read(a) for a in model_input]
        if model_input.ndim == 3 and model_input.shape[-1] == 3:
            return [_read(model_input)]
        return [_read(a) for a in model_input.tolist()]  # a 1-D array of paths
    if isinstance(model_input, (str, os.PathLike, bytes)):
        return [_read(model_input)]
    if isinstance(model_input, (list, tuple)):
        return [_read(item) for item in model_input]
    raise UserInputError(f"pyfunc predict: unsupported input {type(model_input).__name__}")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def _rle(mask: Any) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def detections_dict(det: Any, predictor: Predictor) -> dict[str, Any]:
    """One image's ``detmodels.Detections`` as plain JSON-able lists."""
    labels = [int(i) for i in det.labels.tolist()]
    out = {"boxes": [[float(v) for v in box] for box in det.boxes.tolist()],
           "scores": [float(s) for s in det.scores.tolist()],
           "labels": [int(predictor.category_ids[i]) for i in labels],
           "class_names": [predictor.class_names[i] if i < len(predictor.class_names) else str(i) for i in labels]}
    if getattr(det, "masks", None) is not None:
        out["masks"] = [_rle(m) for m in det.masks.cpu().numpy()]
    return out


class DetectionModel:
    """What :func:`_load_pyfunc` returns: ``predict(model_input)`` → one detections dict per image."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._transform = predictor.transforms()

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        from ..data.loader import collate_detection
        from .video import _collate

        arrays = to_arrays(model_input)
        out: list[dict[str, Any]] = []
        for start in range(0, len(arrays), self.predictor.batch_size):
            images, metas = _collate(arrays[start:start + self.predictor.batch_size], self._transform, collate_detection)
            out += [detections_dict(d, self.predictor) for d in self.predictor(images, metas)]
        return out


def load(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> DetectionModel:
    """The :class:`DetectionModel` of the artifact folder ``path`` with ``config`` (``backend``,
    ``score_thr``, ``batch_size``, ``device``)."""
    cfg = dict(config or {})
    predictor = load_predictor(path, backend=cfg.get("backend") or "torch", device=cfg.get("device"),
                               score_thr=cfg.get("score_thr"), batch_size=int(cfg.get("batch_size") or 4))
    return DetectionModel(predictor)


def _load_pyfunc(data_path: str, model_config: Mapping[str, Any] | None = None) -> DetectionModel:
    """MLflow's loader-module hook (``mlflow.pyfunc.load_model`` / ``mlflow models serve``)."""
    return load(data_path, model_config)
