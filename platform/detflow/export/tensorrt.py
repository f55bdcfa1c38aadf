"""TensorRT engines from an exported ONNX graph: :func:`build_engine` (used by ``detflow export
--format engine`` and by the benchmark's ``tensorrt`` backend) and :func:`tensorrt_status`.

FP16 for float graphs; INT8 (+FP16 fallback) for QDQ graphs, whose Q/DQ scales TensorRT uses as they
are (explicit quantisation). The optimisation profile covers the batch sizes ``(min, opt, max)``.

>>> blob = build_engine("out/model.onnx", precision="fp16", input_size=(640, 640), batch=(1, 4, 8))  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Sequence

from ..errors import RuntimeFailure

__all__ = ["tensorrt_status", "build_engine", "PRECISIONS"]

PRECISIONS = ("fp16", "int8")


def tensorrt_status() -> str | None:
    """None when TensorRT can build engines here, else why not (one line)."""
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError or a broken stub package
        return f"TensorRT is not installed here (import tensorrt failed: {type(exc).__name__}: {exc})"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA device and none is visible here"
    return None


def build_engine(onnx_path: str | os.PathLike, *, precision: str, input_size: Sequence[int],
                 batch: Sequence[int] = (1, 1, 1), workspace_bytes: int = 1 << 30) -> bytes:
    """The serialised TensorRT engine of ``onnx_path`` (input ``images``), profile ``batch = (min, opt, max)``.

    Raises:
        RuntimeFailure: TensorRT cannot parse the graph or build the engine.
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit in TRT 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeFailure(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    h, w = (int(s) for s in input_size)
    lo, opt, hi = (int(b) for b in batch)
    profile.set_shape("images", (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeFailure(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)
