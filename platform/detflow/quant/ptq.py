"""Post-training (calibration-only) int8 quantisation to a QDQ ONNX graph.

Main path: torchao PT2E (``prepare_pt2e`` with the XNNPACK-style conv quantizer, ``calib_batches`` batches through
the observers, ``convert_pt2e``), see :mod:`.common`. Fallback when the PT2E path fails: ONNX
Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, uint8 activations) on the fp32
export, calibrated on the same batches. ``QuantResult.metrics["quant_path"]`` says which ran.

>>> run_ptq("runs/ckpt", "out/ptq", calib_batches=4)          # doctest: +SKIP
QuantResult(onnx_path='out/ptq/model.int8.onnx', ...)
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

import detmodels

from ..errors import RuntimeFailure, UserInputError
from ..export.onnx import DeployModule, deploy_info, export_graph, graph_outputs_info, resolve_model, write_sidecar
from .common import (
    INT8_ONNX, QuantDeployModule, QuantResult, build_quantizer, count_qdq, export_int8, export_program,
    fp32_reference_diff, iter_batches, resolve_skip_layers, save_torch_program, take, write_quant_dir,
)
from .sensitivity import (
    SENSITIVITY_FILE, check_keep_float, layer_sensitivity, quantizable_convs, write_sensitivity_report,
)

__all__ = ["run_ptq", "pt2e_ptq", "ort_static_ptq"]

log = logging.getLogger(__name__)


@torch.no_grad()
def pt2e_ptq(model: detmodels.Detector, calib: Sequence[torch.Tensor], float_modules: Sequence[str],
             style: str = "conv_qdq") -> nn.Module:
    """Calibrated and converted int8 deploy module (images → boxes, scores[, mask_kernels, mask_feat]) of a
    re-parameterised ``model``."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = export_program(model, calib[0])
    prepared = prepare_pt2e(graph, build_quantizer(float_modules, is_qat=False, style=style))
    move_exported_model_to_eval(prepared)
    for images in calib:
        prepared(images)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return QuantDeployModule(converted, model).eval()


def ort_static_ptq(fp32_onnx: str | Path, out_path: str | Path, calib: Sequence[torch.Tensor]) -> str:
    """ONNX Runtime ``quantize_static`` of ``fp32_onnx`` into a QDQ graph (the fallback path)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib)

        def get_next(self) -> dict | None:
            x = next(self._it, None)
            return None if x is None else {"images": x.numpy()}

    quantize_static(str(fp32_onnx), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(out_path)


def run_ptq(
    checkpoint: str | os.PathLike | nn.Module,
    out_dir: str | os.PathLike,
    *,
    calib_batches: int = 4,
    data: Any = None,
    batch_size: int = 8,
    skip_layers: Sequence[str] = (),
    image_size: int | None = None,
    quantizer: str = "conv_qdq",
    fallback: bool = True,
    keep_float: int = 0,
) -> QuantResult:
    """PTQ of a checkpoint (or model) to ``out_dir/model.int8.onnx``.

    Args:
        calib_batches: batches of the calibration set pushed through the observers.
        data: calibration set — None (the checkpoint's train split), a ``DatasetSplit``, or batches.
        skip_layers: module names / globs kept in float (plus DFL projections, see ``resolve_skip_layers``).
        quantizer: ``conv_qdq`` (XNNPACK-style, fast in ONNX Runtime/TensorRT) or ``x86_inductor``.
        fallback: use ORT ``quantize_static`` when the PT2E path fails (it quantizes every conv:
            ``skip_layers`` and ``keep_float`` apply to the PT2E path only).
        keep_float: partial PTQ (YOLOv6): rank the quantizable convs by sensitivity
            (:func:`~.sensitivity.layer_sensitivity` on the calibration batches), keep the ``keep_float``
            most sensitive ones in float and write ``sensitivity.json``; 0 is plain PTQ.

    Raises:
        UserInputError: ``keep_float`` negative or more than the model's quantizable convs (before any
            file is written).
    """
    t0 = time.perf_counter()
    source = resolve_model(checkpoint)
    model = detmodels.reparameterize_model(source.model)
    floats = resolve_skip_layers(model, skip_layers)
    candidates = quantizable_convs(model, floats)
    keep_float = check_keep_float(keep_float, candidates, getattr(model, "family", ""))
    size = image_size or (source.config.data.image_size if source.config is not None else None)
    batches = iter_batches(data, source, size or 0, batch_size=batch_size, shuffle=False)
    calib = [b[0] for b in take(batches, calib_batches)]
    if not calib:
        raise RuntimeFailure("PTQ: the calibration set yielded no batches")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"method": "ptq", "calib_batches": len(calib),
                            "calib_images": int(sum(len(x) for x in calib)), "quantizer": quantizer,
                            "keep_float": keep_float}
    if keep_float:
        info.update(_partial(model, calib, candidates, keep_float, out))
        floats = floats + info["kept_float"]
    info["float_modules"] = floats
    fp32 = DeployModule(model).eval()
    try:
        int8 = pt2e_ptq(model, calib, floats, quantizer)
        info.update(quant_path="pt2e", **export_int8(int8, calib[0], out, source, {"float_modules": floats}))
        info["torch_program"] = save_torch_program(int8, calib[0], out)
    except UserInputError:
        raise
    except Exception as exc:
        if not fallback:
            raise RuntimeFailure(f"PTQ (PT2E) failed: {type(exc).__name__}: {exc}") from exc
        log.warning("PT2E PTQ failed (%s: %s); falling back to ONNX Runtime quantize_static", type(exc).__name__, exc)
        info.update(_fallback(fp32, calib, out, source, error=f"{type(exc).__name__}: {exc}"))
    info.update(fp32_reference_diff(fp32, out / INT8_ONNX, calib[:2]))
    info["wall_time_s"] = time.perf_counter() - t0
    write_quant_dir(out, source, info)
    return QuantResult(str(out / INT8_ONNX), str(out), info)


def _partial(model: nn.Module, calib: Sequence[torch.Tensor], candidates: Sequence[str], keep_float: int,
             out: Path) -> dict[str, Any]:
    """Rank ``candidates`` by sensitivity, write ``sensitivity.json``; the metrics of partial PTQ."""
    ranked = layer_sensitivity(model, calib, candidates)
    kept = [s.name for s in ranked[:keep_float]]
    if ranked[0].nsr == 0:
        log.warning("partial PTQ: no single int8 conv changes the head outputs (an untrained head with zero "
                    "predictor weights?); the convs kept in float are simply the first %d", keep_float)
    write_sensitivity_report(out / SENSITIVITY_FILE, ranked, kept, len(calib))
    log.info("partial PTQ: %d of %d convs kept in float: %s", keep_float, len(ranked), ", ".join(kept))
    return {"kept_float": kept, "quantizable_convs": len(ranked),
            "sensitivity_top": [{"name": s.name, "sqnr_db": round(s.sqnr_db, 4)} for s in ranked[:10]],
            "sensitivity_report": SENSITIVITY_FILE}


def _fallback(fp32: nn.Module, calib: Sequence[torch.Tensor], out: Path, source, *, error: str) -> dict[str, Any]:
    fp32_path = out / "model.fp32.onnx"
    exporter = export_graph(fp32, calib[0], fp32_path, dynamic_batch=True)
    ort_static_ptq(fp32_path, out / INT8_ONNX, calib)
    size = tuple(calib[0].shape[-2:])
    info = deploy_info(source, size, precision="int8", exporter=exporter, dynamic_batch=True,
                       with_nms=False, quant_path="ort_quantize_static", **graph_outputs_info(fp32.model))
    write_sidecar(out / INT8_ONNX, info)
    return {"quant_path": "ort_quantize_static", "pt2e_error": error, "exporter": exporter,
            "qdq_nodes": count_qdq(out / INT8_ONNX), "torch_program": None}
