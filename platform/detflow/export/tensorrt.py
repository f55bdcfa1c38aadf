"""TensorRT engines from an exported ONNX graph: :func:`build_engine` (used by ``detflow export
--format engine`` and by the benchmark's ``tensorrt`` backend) and :func:`tensorrt_status`.

FP16 for float graphs; INT8 (+FP16 fallback) for QDQ graphs, whose Q/DQ scales TensorRT uses as they
are (explicit quantisation), or for fp32 graphs with a ``calibrator`` (:func:`entropy_calibrator`:
TensorRT's entropy calibration on calibration images, implicit quantisation). The optimisation
profile covers the batch sizes ``(min, opt, max)``.

>>> blob = build_engine("out/model.onnx", precision="fp16", input_size=(640, 640), batch=(1, 4, 8))  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import RuntimeFailure

__all__ = ["tensorrt_status", "build_engine", "entropy_calibrator", "PRECISIONS"]

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
                 batch: Sequence[int] = (1, 1, 1), workspace_bytes: int = 1 << 30,
                 calibrator: Any = None) -> bytes:
    """The serialised TensorRT engine of ``onnx_path`` (input ``images``), profile ``batch = (min, opt, max)``.

    ``calibrator`` (int8 only; from :func:`entropy_calibrator`) calibrates an fp32 graph; its
    ``batch_size`` images per batch fix the calibration profile. Without one an int8 build expects
    a Q/DQ graph.

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
    h, w = (int(s) for s in input_size)
    lo, opt, hi = (int(b) for b in batch)
    config.add_optimization_profile(_profile(builder, (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w)))
    if calibrator is not None:
        if precision != "int8":
            raise ValueError(f"calibrator: only for an int8 build, got precision {precision!r}")
        n = int(calibrator.get_batch_size())
        config.int8_calibrator = calibrator
        config.set_calibration_profile(_profile(builder, *[(n, 3, h, w)] * 3))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeFailure(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


def _profile(builder: Any, lo: tuple, opt: tuple, hi: tuple) -> Any:
    """An optimisation profile of input ``images`` with shapes ``lo`` / ``opt`` / ``hi``."""
    profile = builder.create_optimization_profile()
    profile.set_shape("images", lo, opt, hi)
    return profile


def entropy_calibrator(batches: Iterable[Any], *, batch_size: int, cache_file: str | os.PathLike) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` feeding ``batches`` (``N×3×H×W`` float tensors or
    arrays, normalised as the graph expects; batches of another ``N`` than ``batch_size`` are skipped)
    to TensorRT, one CUDA copy at a time. ``cache_file``: read when it exists (TensorRT then skips
    calibration), else written with the scales calibration found.
    """
    import tensorrt as trt

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """TensorRT's entropy calibrator over detflow's calibration batches."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.cache = Path(cache_file)
            self.batches = iter(batches)
            self.current = None  # the CUDA tensor TensorRT is reading; kept alive until the next batch
            self.used = 0

        def get_batch_size(self) -> int:
            return int(batch_size)

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            import numpy as np
            import torch

            for item in self.batches:
                x = torch.as_tensor(np.asarray(item) if not torch.is_tensor(item) else item)
                if x.ndim != 4 or x.shape[0] != batch_size:
                    continue
                self.current = x.to("cuda", torch.float32).contiguous()
                self.used += 1
                return [int(self.current.data_ptr())] * len(names)
            return None

        def read_calibration_cache(self) -> bytes | None:
            return self.cache.read_bytes() if self.cache.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            from ..atomic import atomic_write

            atomic_write(self.cache, bytes(cache))

    return _EntropyCalibrator()
