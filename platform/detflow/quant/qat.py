"""Quantisation-aware fine-tuning (torchao PT2E) to an int8 QDQ ONNX graph.

Re-parameterise (BN folded, RepVGG branches merged) → ``torch.export`` the raw forward →
``prepare_qat_pt2e`` with the XNNPACK-style conv quantizer (fake-quant on weights and activations; DFL projections
and ``skip_layers`` stay float) → a few short epochs of ``model.loss`` on the prepared graph's
outputs → ``convert_pt2e`` → QDQ ONNX (see :mod:`.common`). The data pipeline is the val-style
letterbox of the checkpoint's ``data.image_size`` on the training split: short, no mosaic.

>>> run_qat("runs/ckpt", "out/qat", epochs=2, max_steps_per_epoch=20)   # doctest: +SKIP
QuantResult(onnx_path='out/qat/model.int8.onnx', ...)
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

import detmodels

from ..errors import RuntimeFailure
from ..export.onnx import DeployModule, resolve_model
from .common import (
    INT8_ONNX, Batch, QuantDeployModule, QuantResult, build_quantizer, export_int8, export_program,
    fp32_reference_diff, iter_batches, resolve_skip_layers, save_torch_program, write_quant_dir,
)

__all__ = ["run_qat", "qat_finetune"]

log = logging.getLogger(__name__)


def _train_epoch(prepared: nn.Module, model: detmodels.Detector, batches: Iterable[Batch],
                 optimizer: torch.optim.Optimizer, max_steps: int | None) -> list[float]:
    losses = []
    for step, (images, targets, _) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        terms = model.loss(prepared(images), targets)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise RuntimeFailure(f"QAT: non-finite loss at step {step}: { {k: float(v) for k, v in terms.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prepared.parameters(), 10.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def qat_finetune(
    model: detmodels.Detector,
    batches: Iterable[Batch],
    *,
    epochs: int,
    lr: float,
    max_steps_per_epoch: int | None,
    float_modules: Sequence[str],
    style: str = "conv_qdq",
) -> tuple[nn.Module, list[float]]:
    """Fake-quant fine-tuning of a re-parameterised ``model``; returns (int8 deploy module, mean loss per epoch)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    first = next(iter(batches), None)
    if first is None:
        raise RuntimeFailure("QAT: the training split yielded no batches")
    quantizer = build_quantizer(float_modules, is_qat=True, style=style)
    prepared = prepare_qat_pt2e(export_program(model.eval(), first[0]), quantizer)
    optimizer = torch.optim.AdamW([p for p in prepared.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    for epoch in range(epochs):
        model.set_epoch(epoch, epochs)
        move_exported_model_to_train(prepared)
        losses = _train_epoch(prepared, model, batches, optimizer, max_steps_per_epoch)
        history.append(sum(losses) / max(len(losses), 1))
        log.info("QAT epoch %d/%d: loss %.4f over %d steps", epoch + 1, epochs, history[-1], len(losses))
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
) -> QuantResult:
    """QAT of a checkpoint (or model) to ``out_dir/model.int8.onnx``.

    Args:
        epochs / lr / max_steps_per_epoch: the fine-tuning schedule (AdamW, constant lr, grad-clip 10).
        skip_layers: module names / globs kept in float (plus DFL projections).
        data: training data — None (the checkpoint's train split), a ``DatasetSplit``, or batches
            ``(images, targets[, metas])``.
        quantizer: ``conv_qdq`` (XNNPACK-style, fast in ONNX Runtime/TensorRT) or ``x86_inductor``.
    """
    t0 = time.perf_counter()
    source = resolve_model(checkpoint)
    model = detmodels.reparameterize_model(source.model)
    fp32 = DeployModule(copy.deepcopy(model)).eval()
    size = image_size or (source.config.data.image_size if source.config is not None else None)
    batches = iter_batches(data, source, size or 0, batch_size=batch_size, shuffle=True)
    floats = resolve_skip_layers(model, skip_layers)
    int8, history = qat_finetune(model, batches, epochs=epochs, lr=lr, max_steps_per_epoch=max_steps_per_epoch,
                                 float_modules=floats, style=quantizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = next(iter(batches))[0]
    info: dict[str, Any] = {"method": "qat", "quant_path": "pt2e", "quantizer": quantizer, "epochs": epochs, "lr": lr,
                            "max_steps_per_epoch": max_steps_per_epoch, "float_modules": floats,
                            "loss_history": history, "final_loss": history[-1] if history else math.nan}
    info.update(export_int8(int8, example, out, source, {"float_modules": floats, "quant_path": "pt2e"}))
    info["torch_program"] = save_torch_program(int8, example, out)
    info.update(fp32_reference_diff(fp32, out / INT8_ONNX, [example]))
    info["wall_time_s"] = time.perf_counter() - t0
    write_quant_dir(out, source, info)
    return QuantResult(str(out / INT8_ONNX), str(out), info)
