"""A :class:`Predictor`: any deployable artifact as ``(letterboxed images, metas) -> detections``.

A checkpoint on the ``torch`` backend runs the model and its own post-processing (masks of
instance models included). Every other artifact or backend (an fp32 / int8 ONNX export, a
checkpoint on ``onnxruntime`` or ``tensorrt``) runs through the benchmark's runners
(:func:`detflow.bench.backends.make_runner`) and the same dense post-processing and letterbox undo
as :func:`detflow.bench.evaluate.evaluate_artifact`: what ``predict`` returns is what the
benchmark scored.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import UserInputError

__all__ = ["Predictor", "load_predictor", "resolve_source"]


@dataclasses.dataclass
class Predictor:
    """``predictor(images, metas)`` → per-image ``detmodels.Detections`` in original pixels.

    ``images``: ``B×3×H×W`` normalised, letterboxed by :meth:`transforms` and batched by
    ``collate_detection``; ``metas``: their ``orig_size`` / ``scale``. ``batch_size``: the most
    images one call takes (a fixed-batch graph's batch).
    """

    name: str
    backend: str
    input_size: tuple[int, int]
    input_spec: Any
    class_names: list[str]
    category_ids: list[int]
    batch_size: int
    detect: Callable[[torch.Tensor, Sequence[dict]], list]

    def transforms(self) -> Any:
        from ..data import build_val_transforms

        return build_val_transforms(self.input_size[0], self.input_spec)

    def __call__(self, images: torch.Tensor, metas: Sequence[dict]) -> list:
        dets = []
        for start in range(0, images.shape[0], self.batch_size):
            dets += self.detect(images[start:start + self.batch_size], metas[start:start + self.batch_size])
        return dets


def resolve_source(source: str | Path) -> Path:
    """A local artifact path for SOURCE: a registered version (``models:/…``, downloaded), an object
    store URI (``s3://…``, downloaded) or an existing local path."""
    from .. import artifact_store

    text = str(source)
    if text.startswith("models:/"):
        return _registered(text)
    if artifact_store.is_uri(text):
        return Path(artifact_store.materialize(text))
    path = Path(text).expanduser()
    if not path.exists():
        raise UserInputError(f"SOURCE {text!r}: no such artifact (expected a checkpoint or export directory, an "
                             ".onnx file, models:/NAME@ALIAS or an s3:// URI)")
    return path


def _registered(uri: str) -> Path:
    """The local folder of a registered version: its checkpoint, else (a version registered from an
    engine directory) the engine directory."""
    from ..export.engine_artifact import is_engine_dir
    from ..tracking.registry import download_model_version
    from ..weights.pull import weights_dir
    from ..weights.resolve import registered_checkpoint

    try:
        return registered_checkpoint(uri)
    except UserInputError:
        local = download_model_version(uri, weights_dir() / "registry")  # cached by registered_checkpoint
        if is_engine_dir(local):
            return local
        raise


def _on_cpu(det: Any) -> Any:
    return dataclasses.replace(det, **{f.name: getattr(det, f.name).cpu() for f in dataclasses.fields(det)
                                       if torch.is_tensor(getattr(det, f.name))})


def _checkpoint_detect(path: Path, device: str, score_thr: float | None) -> tuple[Any, Callable, dict]:
    from ..engine.checkpoint import load_checkpoint_model

    model, cfg, meta = load_checkpoint_model(path)
    model.to(device)
    thr = cfg.train.score_thr if score_thr is None else score_thr

    @torch.inference_mode()
    def detect(images: torch.Tensor, metas: Sequence[dict]) -> list:
        outputs = model(images.to(device))
        dets = model.postprocess(outputs, [tuple(m["orig_size"]) for m in metas], score_thr=thr,
                                 nms_iou=cfg.train.nms_iou, max_det=cfg.train.max_det,
                                 scale_factors=[float(m["scale"]) for m in metas])
        return [_on_cpu(d) for d in dets]

    size = int(meta.get("image_size") or cfg.data.image_size)
    return model.input_spec, detect, {"input_size": (size, size), "category_ids": meta["category_ids"],
                                      "class_names": meta["class_names"]}


def _runner_detect(art: Any, backend: str, input_size: tuple[int, int] | None, score_thr: float | None,
                   batch_size: int) -> tuple[Callable, tuple[int, int], int]:
    from ..bench.backends import make_runner
    from ..bench.evaluate import _pad_batch, outputs_to_detections, resolve_input_size

    size = resolve_input_size(art, input_size)
    runner = make_runner(art, backend, input_size=size, max_batch=batch_size)
    batch = runner.max_batch or batch_size
    thr = 0.001 if score_thr is None else score_thr  # the benchmark's default (as a checkpoint's config)

    def detect(images: torch.Tensor, metas: Sequence[dict]) -> list:
        outputs = runner(_pad_batch(images, batch) if runner.max_batch else images)
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        return outputs_to_detections(outputs, runner, metas, hw, score_thr=thr, nms_iou=0.65, max_det=100)

    return detect, size, batch


def load_predictor(source: str | Path, *, backend: str = "torch", device: str | None = None,
                   score_thr: float | None = None, input_size: int | None = None, batch_size: int = 4) -> Predictor:
    """The :class:`Predictor` of SOURCE (see :func:`resolve_source`) on ``backend`` (one of
    :data:`detflow.bench.backends.BACKENDS`). A saved TensorRT engine directory runs on
    ``tensorrt`` (the default ``torch`` means it there), after its sidecar was checked against this
    GPU and TensorRT (:func:`detflow.export.engine_artifact.load_engine`: refused in one line)."""
    from ..bench.backends import BACKENDS, load_artifact

    if backend not in BACKENDS:
        raise UserInputError(f"--backend {backend!r}: expected one of {' | '.join(BACKENDS)}")
    path = resolve_source(source)
    art = load_artifact(path)
    if art.kind == "engine" and backend == "torch":
        backend = "tensorrt"
    names = list(art.info.get("class_names") or [])
    ids = list(art.info.get("category_ids") or range(1, (len(names) or int(art.info.get("num_classes") or 0)) + 1))
    if art.kind == "checkpoint" and backend == "torch":
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        spec, detect, info = _checkpoint_detect(path, dev, score_thr)
        size = (input_size, input_size) if input_size else info["input_size"]
        return Predictor(art.name, backend, size, spec, list(info["class_names"]), list(info["category_ids"]),
                         batch_size, detect)
    detect, size, batch = _runner_detect(art, backend, (input_size, input_size) if input_size else None,
                                         score_thr, batch_size)
    if not names:
        names = [str(i) for i in ids]
    return Predictor(art.name, backend, size, art.input_spec, names, ids, batch, detect)
