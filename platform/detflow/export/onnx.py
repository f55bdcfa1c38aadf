"""ONNX export of a detector's deploy form, checked against PyTorch in ONNX Runtime.

The exported graph is ``model.deploy_outputs`` after :func:`detmodels.reparameterize_model`: input
``images`` ``N×3×H×W`` already normalised with the model's ``InputSpec`` (no normalisation in the
graph), outputs ``boxes`` ``N×A×4`` (xyxy, input pixels) and ``scores`` ``N×A×C`` (probabilities).
With ``with_nms`` the graph continues with ONNX ``NonMaxSuppression`` (see :mod:`.nms`).

Instance models (RTMDet-Ins, ``model.deploy_output_names``) add two outputs: ``mask_kernels``
``N×A×169`` (each prior's dynamic-conv parameters) and ``mask_feat`` ``N×8×H/8×W/8`` (the mask
prototypes); after NMS, :func:`detmodels.dense_instance_postprocess` (the step the torch model's own
``postprocess`` runs) applies the kept priors' kernels to ``mask_feat`` and resizes/thresholds the masks
to original pixels. Their sidecar says ``"task": "segm"`` and records ``"instance": {"strides", ...}``.
The ``with_nms`` graph of an instance model keeps boxes only (no masks).

Next to every ``.onnx`` file a sidecar ``.json`` records what a runtime needs to use it (input size,
pixel normalisation, class ids, outputs, precision); :func:`read_sidecar` reads it back.

>>> result = export_onnx("runs/ckpt", "out/export")          # doctest: +SKIP
>>> result.onnx_path, result.max_abs_diff                     # doctest: +SKIP
('out/export/model.onnx', 3.1e-06)
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import detmodels

from ..atomic import atomic_path, atomic_write, read_json_state
from ..errors import RuntimeFailure, UserInputError

__all__ = [
    "ExportResult", "ModelSource", "DeployModule", "export_onnx", "resolve_model", "ort_session",
    "read_sidecar", "write_sidecar", "sidecar_path", "normalize_input_size", "export_graph",
    "compare_onnx_to_torch", "output_names_of", "graph_outputs_info",
]

log = logging.getLogger(__name__)
# The dynamo exporter logs one "torchvision is not installed" warning per torchvision op it would
# register; detflow never needs them (NMS is ours), so keep them out of step logs.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OUTPUT_NAMES = ("boxes", "scores")


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        onnx_path: the exported graph (with NMS when requested).
        max_abs_diff: max |ORT − torch| over ``boxes`` and ``scores`` (batch 2, and 1/3 when dynamic).
        input_size: ``(H, W)`` the graph was exported at.
        exporter: ``"dynamo"`` or ``"torchscript"`` (the fallback).
        with_nms: whether NMS is in the graph; dynamic_batch: whether the batch axis is symbolic.
        sidecar: path of the sidecar JSON.
    """

    onnx_path: str
    max_abs_diff: float
    input_size: tuple[int, int]
    exporter: str = "dynamo"
    with_nms: bool = False
    dynamic_batch: bool = True
    sidecar: str = ""


@dataclasses.dataclass
class ModelSource:
    """A detector plus what is known about it (checkpoint meta, resolved TrainConfig or None)."""

    model: detmodels.Detector
    meta: dict[str, Any]
    config: Any | None = None
    checkpoint: str | None = None


class DeployModule(nn.Module):
    """``images`` (``N×3×H×W``, normalised) → ``(boxes N×A×4, scores N×A×C[, mask_kernels, mask_feat])``:
    the graph that is exported (outputs named by :attr:`output_names`)."""

    def __init__(self, model: detmodels.Detector):
        super().__init__()
        self.model = model

    @property
    def output_names(self) -> tuple[str, ...]:
        return output_names_of(self.model)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.model.deploy_outputs(images)


def output_names_of(model: nn.Module) -> tuple[str, ...]:
    """The deploy output names of a detector (``boxes, scores`` unless it declares more)."""
    return tuple(getattr(model, "deploy_output_names", OUTPUT_NAMES))


def graph_outputs_info(model: nn.Module) -> dict[str, Any]:
    """Sidecar fields naming a deploy graph's outputs: ``outputs``, and for instance models
    ``task: segm`` plus ``instance`` (prior strides, mask stride, mask threshold)."""
    names = output_names_of(model)
    info: dict[str, Any] = {"outputs": list(names)}
    if "mask_kernels" in names:
        strides = [int(s) for s in getattr(model, "strides", (8, 16, 32))]
        info.update(task="segm", instance={"strides": strides, "mask_stride": strides[0], "mask_thr": 0.5,
                                           "postprocess": "detmodels.dense_instance_postprocess"})
    return info


def resolve_model(checkpoint_or_model: str | os.PathLike | nn.Module) -> ModelSource:
    """A detector from a checkpoint directory (via ``load_checkpoint_model``) or a model object.

    The returned model is a deep copy for model objects, so re-parameterising it never touches the caller's.
    """
    if isinstance(checkpoint_or_model, nn.Module):
        model = copy.deepcopy(checkpoint_or_model).eval()
        meta = {"model": type(model).__name__, "num_classes": int(getattr(model, "num_classes", 0)),
                "category_ids": None}  # unknown for a bare model: the evaluation dataset decides
        return ModelSource(model, meta)
    path = Path(checkpoint_or_model)
    if not (path / "model.pt").is_file():
        raise UserInputError(f"{path}: not a detflow checkpoint directory (expected model.pt, config.yaml, meta.json)")
    from ..engine.checkpoint import load_checkpoint_model

    model, config, meta = load_checkpoint_model(path)
    return ModelSource(model.eval(), dict(meta), config, str(path.resolve()))


def normalize_input_size(input_size: int | Sequence[int] | None, source: ModelSource) -> tuple[int, int]:
    """``(H, W)`` from an int, a pair or the checkpoint's ``data.image_size``; multiples of the largest stride."""
    if input_size is None:
        cfg = source.config
        if cfg is None:
            raise UserInputError("export: input_size is required when exporting a model object (e.g. input_size=320)")
        input_size = cfg.data.image_size
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    stride = max(getattr(source.model, "strides", (32,)) or (32,))
    if len(size) != 2 or any(s <= 0 or s % stride for s in size):
        raise UserInputError(f"export: input_size: expected positive multiples of {stride} (H, W), got {input_size!r}")
    return size  # type: ignore[return-value]


def export_graph(module: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool,
                 opset: int | None = None) -> str:
    """Write ``module(example)`` as ONNX to ``path``; dynamo exporter first, TorchScript exporter as fallback.

    Returns the exporter used (``"dynamo"`` or ``"torchscript"``). Output names are ``module.output_names``
    (default ``boxes``, ``scores``).
    """
    with atomic_path(path) as tmp:  # a crash mid-export never leaves a truncated graph at ``path``
        return _export_to(module, example, tmp, dynamic_batch=dynamic_batch, opset=opset)


def _export_to(module: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool, opset: int | None) -> str:
    """:func:`export_graph` into ``path`` (a temporary name)."""
    names = list(getattr(module, "output_names", OUTPUT_NAMES))
    try:
        dyn = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, input_names=["images"], output_names=names,
                dynamic_shapes=dyn, opset_version=opset or 18, optimize=True, verbose=False,
            )
        program.save(str(path), external_data=False)
        return "dynamo"
    except Exception as exc:  # the TorchScript exporter handles some graphs dynamo cannot
        log.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    axes = {name: {0: "batch"} for name in ("images", *names)} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=min(opset or 17, 17),
                input_names=["images"], output_names=names, dynamic_axes=axes,
            )
    except Exception as exc:
        raise RuntimeFailure(f"ONNX export failed with both exporters: {type(exc).__name__}: {exc}") from exc
    return "torchscript"


def ort_session(path: str | os.PathLike, *, threads: int = 1, providers: Sequence[str] | None = None):
    """An ONNX Runtime session (``intra_op_num_threads=threads``, CPU EP unless ``providers`` given)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))


def compare_onnx_to_torch(module: nn.Module, onnx_path: str | os.PathLike, inputs: Sequence[Tensor], *,
                          threads: int = 1) -> float:
    """Max |ORT − torch| over every output and every input batch in ``inputs``."""
    sess = ort_session(onnx_path, threads=threads)
    name = sess.get_inputs()[0].name
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = module(x)
        got = sess.run(None, {name: x.numpy()})
        for r, g in zip(ref, got):
            if tuple(r.shape) != tuple(g.shape):
                raise RuntimeFailure(f"ONNX output shape {g.shape} differs from torch {tuple(r.shape)}")
            worst = max(worst, float(np.abs(r.detach().numpy() - g).max()) if g.size else 0.0)
    return worst


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).with_suffix(".json")


def write_sidecar(onnx_path: str | os.PathLike, info: dict[str, Any]) -> Path:
    path = sidecar_path(onnx_path)
    atomic_write(path, json.dumps(info, indent=2, default=str))
    return path


def read_sidecar(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar JSON of an exported graph ({} when there is none)."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        return {}
    return read_json_state(path, "ONNX sidecar", "export the model again (`detflow export`) to rewrite it")


def deploy_info(source: ModelSource, input_size: tuple[int, int], **extra: Any) -> dict[str, Any]:
    """Sidecar fields shared by fp32 and int8 exports."""
    spec = getattr(source.model, "input_spec", detmodels.InputSpec())
    return {
        "model": source.meta.get("model"),
        "family": getattr(source.model, "family", ""),
        "num_classes": int(source.model.num_classes),
        "category_ids": source.meta.get("category_ids"),
        "class_names": source.meta.get("class_names"),
        "input_size": list(input_size),
        "input_spec": dataclasses.asdict(spec),
        "checkpoint": source.checkpoint,
        "detflow_torch": torch.__version__,
        **extra,
    }


def export_onnx(
    checkpoint_or_model: str | os.PathLike | nn.Module,
    out_dir: str | os.PathLike,
    *,
    input_size: int | Sequence[int] | None = None,
    dynamic_batch: bool = True,
    with_nms: bool = False,
    nms_iou: float = 0.65,
    score_thr: float = 0.001,
    max_det: int = 100,
    threads: int = 1,
) -> ExportResult:
    """Export the deploy form to ``out_dir/model.onnx`` (and ``model_nms.onnx`` with ``with_nms``).

    Args:
        checkpoint_or_model: a checkpoint directory or a ``detmodels.Detector`` (copied, then re-parameterised).
        input_size: int or ``(H, W)``; default the checkpoint's ``data.image_size``.
        dynamic_batch: symbolic batch axis (checked by running batches 1 and 3 as well).
        with_nms: append ONNX NonMaxSuppression producing fixed-size outputs
            ``num_dets N``, ``det_boxes N×max_det×4``, ``det_scores N×max_det``, ``det_labels N×max_det``.
    Raises:
        UserInputError: bad checkpoint or input size. RuntimeFailure: both exporters failed.
    """
    source = resolve_model(checkpoint_or_model)
    size = normalize_input_size(input_size, source)
    module = DeployModule(detmodels.reparameterize_model(source.model)).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2 if dynamic_batch else 1, 3, *size, generator=gen)
    exporter = export_graph(module, example, onnx_path, dynamic_batch=dynamic_batch)
    checks = [example]
    if dynamic_batch:
        checks += [torch.randn(b, 3, *size, generator=gen) for b in (1, 3)]
    diff = compare_onnx_to_torch(module, onnx_path, checks, threads=threads)
    info = deploy_info(source, size, precision="fp32", exporter=exporter, dynamic_batch=dynamic_batch,
                       with_nms=False, max_abs_diff=diff, **graph_outputs_info(module.model))
    sidecar = write_sidecar(onnx_path, info)
    final = onnx_path
    if with_nms:
        from .nms import append_nms

        final = out / "model_nms.onnx"
        append_nms(onnx_path, final, iou_threshold=nms_iou, score_threshold=score_thr, max_det=max_det)
        nms_info = dict(info, with_nms=True, outputs=["num_dets", "det_boxes", "det_scores", "det_labels"],
                        nms={"iou": nms_iou, "score_thr": score_thr, "max_det": max_det})
        nms_info.pop("instance", None)  # NMS keeps boxes only: no masks from this graph
        nms_info.pop("task", None)
        sidecar = write_sidecar(final, nms_info)
    log.info("exported %s (%s exporter, max |ORT - torch| = %.3g)", final, exporter, diff)
    return ExportResult(str(final), diff, size, exporter, with_nms, dynamic_batch, str(sidecar))
