"""Quantisation-aware fine-tuning (torchao PT2E) to an int8 QDQ ONNX graph.

Re-parameterise (BN folded, RepVGG branches merged) → ``torch.export`` the raw forward →
``prepare_qat_pt2e`` with the XNNPACK-style conv quantizer (fake-quant on weights and activations; DFL projections
and ``skip_layers`` stay float) → a few short epochs of ``model.loss`` on the prepared graph's
outputs (+ ``weight`` × channel-wise distillation of the neck features from the fp32 model, YOLOv6's QAT
recipe, when ``distill`` is set: :mod:`.distill`) → ``convert_pt2e`` → QDQ ONNX (see :mod:`.common`). The data
pipeline is the val-style letterbox of the checkpoint's ``data.image_size`` on the training split: short, no mosaic.

>>> run_qat("runs/ckpt", "out/qat", epochs=2, max_steps_per_epoch=20, distill={"weight": 10.0})  # doctest: +SKIP
QuantResult(onnx_path='out/qat/model.int8.onnx', ...)
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

import detmodels

from ..errors import RuntimeFailure
from ..export.onnx import DeployModule, resolve_model
from .common import (
    INT8_ONNX, Batch, QuantDeployModule, QuantResult, build_quantizer, export_int8, export_program,
    fp32_reference_diff, iter_batches, resolve_skip_layers, save_torch_program, split_features, write_quant_dir,
)
from .distill import CWDConfig, CWDTeacher, distill_config, feature_module_name, features_in_outputs

__all__ = ["run_qat", "qat_finetune"]

log = logging.getLogger(__name__)


def _step_terms(prepared: nn.Module, model: detmodels.Detector, images: torch.Tensor, targets: list,
                teacher: CWDTeacher | None) -> dict[str, torch.Tensor]:
    """Loss terms of one step: ``model.loss`` on the student's raw outputs, + ``loss_cwd`` when distilling."""
    raw, feats = split_features(prepared(images))
    terms = dict(model.loss(raw, targets))
    if teacher is not None:
        terms["loss_cwd"] = teacher.loss(images, feats)
    return terms


def _train_epoch(prepared: nn.Module, model: detmodels.Detector, batches: Iterable[Batch],
                 optimizer: torch.optim.Optimizer, max_steps: int | None,
                 teacher: CWDTeacher | None = None) -> list[dict[str, float]]:
    """One pass over ``batches``; per step ``{"loss": total[, "cwd": weighted CWD term]}``."""
    steps = []
    for step, (images, targets, _) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        terms = _step_terms(prepared, model, images, targets, teacher)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise RuntimeFailure(f"QAT: non-finite loss at step {step}: { {k: float(v) for k, v in terms.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prepared.parameters(), 10.0)
        optimizer.step()
        steps.append({"loss": float(loss.detach())} | ({"cwd": float(terms["loss_cwd"].detach())} if teacher else {}))
    return steps


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _prepare(model: detmodels.Detector, example: torch.Tensor, quantizer: Any, features: bool) -> nn.Module:
    """``prepare_qat_pt2e`` of the exported raw forward (which also returns the neck features when ``features``)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    with features_in_outputs(model) if features else contextlib.nullcontext():
        graph = export_program(model.eval(), example)
    return prepare_qat_pt2e(graph, quantizer)


def qat_finetune(
    model: detmodels.Detector,
    batches: Iterable[Batch],
    *,
    epochs: int,
    lr: float,
    max_steps_per_epoch: int | None,
    float_modules: Sequence[str],
    style: str = "conv_qdq",
    distill: CWDConfig | None = None,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Fake-quant fine-tuning of a re-parameterised ``model``; with ``distill``, channel-wise distillation of the
    neck features from an fp32 copy of ``model`` (:mod:`.distill`).

    Returns:
        the int8 deploy module and the history: ``loss`` (mean total loss per epoch) and, when distilling,
        ``cwd`` (mean weighted CWD term per epoch) and ``cwd_steps`` (the term at every step).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    first = next(iter(batches), None)
    if first is None:
        raise RuntimeFailure("QAT: the training split yielded no batches")
    teacher = CWDTeacher(copy.deepcopy(model), distill) if distill is not None else None
    prepared = _prepare(model, first[0], build_quantizer(float_modules, is_qat=True, style=style), teacher is not None)
    optimizer = torch.optim.AdamW([p for p in prepared.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history: dict[str, list[float]] = {"loss": []} | ({"cwd": [], "cwd_steps": []} if teacher else {})
    with teacher.active() if teacher else contextlib.nullcontext():
        for epoch in range(epochs):
            model.set_epoch(epoch, epochs)
            move_exported_model_to_train(prepared)
            steps = _train_epoch(prepared, model, batches, optimizer, max_steps_per_epoch, teacher)
            history["loss"].append(_mean([s["loss"] for s in steps]))
            if teacher:
                history["cwd_steps"] += [s["cwd"] for s in steps]
                history["cwd"].append(_mean([s["cwd"] for s in steps]))
            log.info("QAT epoch %d/%d: loss %.4f over %d steps%s", epoch + 1, epochs, history["loss"][-1], len(steps),
                     f" (cwd {history['cwd'][-1]:.4f})" if teacher else "")
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return QuantDeployModule(converted, model).eval(), history


def run_qat(
    checkpoint: str | os.PathLike | nn.Module,
    out_dir: str | os.PathLike,
    *,
    epochs: int = 2,
    lr: float = 1e-5,
    max_steps_per_epoch: int | None = None,
    skip_layers: Sequence[str] = (),
    data: Any = None,
    batch_size: int = 8,
    image_size: int | None = None,
    quantizer: str = "conv_qdq",
    distill: CWDConfig | Mapping[str, float] | bool | None = None,
) -> QuantResult:
    """QAT of a checkpoint (or model) to ``out_dir/model.int8.onnx``.

    Args:
        epochs / lr / max_steps_per_epoch: the fine-tuning schedule (AdamW, constant lr, grad-clip 10).
        skip_layers: module names / globs kept in float (plus DFL projections).
        data: training data — None (the checkpoint's train split), a ``DatasetSplit``, or batches
            ``(images, targets[, metas])``.
        quantizer: ``conv_qdq`` (XNNPACK-style, fast in ONNX Runtime/TensorRT) or ``x86_inductor``.
        distill: channel-wise distillation from the fp32 model on the neck features (YOLOv6 QAT):
            ``{"weight": 10.0, "temperature": 1.0}`` (either key may be left out), a :class:`CWDConfig`,
            True for those defaults, or None / False for none. Metrics then hold ``cwd_history``
            (mean weighted term per epoch), ``cwd_steps`` and ``final_cwd``.

    Raises:
        UserInputError: a bad ``distill`` value, or distillation of a model without a neck/backbone
            (before any file is written).
    """
    t0 = time.perf_counter()
    cwd = distill_config(distill)
    source = resolve_model(checkpoint)
    model = detmodels.reparameterize_model(source.model)
    feature_module = feature_module_name(model) if cwd else None
    fp32 = DeployModule(copy.deepcopy(model)).eval()
    size = image_size or (source.config.data.image_size if source.config is not None else None)
    batches = iter_batches(data, source, size or 0, batch_size=batch_size, shuffle=True)
    floats = resolve_skip_layers(model, skip_layers)
    int8, history = qat_finetune(model, batches, epochs=epochs, lr=lr, max_steps_per_epoch=max_steps_per_epoch,
                                 float_modules=floats, style=quantizer, distill=cwd)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = next(iter(batches))[0]
    info: dict[str, Any] = {"method": "qat", "quant_path": "pt2e", "quantizer": quantizer, "epochs": epochs, "lr": lr,
                            "max_steps_per_epoch": max_steps_per_epoch, "float_modules": floats,
                            "loss_history": history["loss"],
                            "final_loss": history["loss"][-1] if history["loss"] else math.nan,
                            "distill": _distill_info(cwd, feature_module)}
    if cwd is not None:
        info.update(cwd_history=history["cwd"], cwd_steps=history["cwd_steps"],
                    final_cwd=history["cwd"][-1] if history["cwd"] else math.nan)
    info.update(export_int8(int8, example, out, source, {"float_modules": floats, "quant_path": "pt2e"}))
    info["torch_program"] = save_torch_program(int8, example, out)
    info.update(fp32_reference_diff(fp32, out / INT8_ONNX, [example]))
    info["wall_time_s"] = time.perf_counter() - t0
    write_quant_dir(out, source, info)
    return QuantResult(str(out / INT8_ONNX), str(out), info)


def _distill_info(cwd: CWDConfig | None, feature_module: str | None) -> dict[str, Any] | None:
    if cwd is None:
        return None
    return {"method": "channel_wise", "weight": cwd.weight, "temperature": cwd.temperature,
            "teacher": "fp32 re-parameterised source", "features": f"{feature_module} outputs"}
