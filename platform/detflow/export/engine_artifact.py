"""A TensorRT engine as a saved, checked artifact: a directory with ``model.engine`` (the serialised
plan) and its sidecar ``model.engine.json``.

A serialised engine runs only on the GPU model (compute capability) and the TensorRT version that
built it. The sidecar records what it was built with and for, so a mismatch is refused in one line
before TensorRT ever sees the bytes:

* ``precision`` (``fp16`` | ``int8``) and ``int8_method`` (``qdq``: explicit quantisation from a Q/DQ
  graph; ``entropy``: TensorRT entropy calibration of an fp32 graph; None for fp16);
* ``profile``: the input name and its ``min`` / ``opt`` / ``max`` shapes; ``workspace_bytes``;
* ``environment``: ``tensorrt``, ``cuda``, ``driver``, ``gpu_name``, ``compute_capability``;
* ``onnx``: the graph's path and SHA-256; ``detflow`` version; ``built_at``;
* what predict and the benchmark need to decode the outputs, copied from the ONNX sidecar
  (``class_names``, ``category_ids``, ``num_classes``, ``input_size``, ``input_spec`` …).

:func:`check_engine_compatible` compares a sidecar with an :func:`engine_environment`;
:func:`load_engine` reads, checks and deserialises.

>>> info = engine_sidecar("out/model.onnx", precision="fp16", input_size=(640, 640), batch=(1, 4, 8),
...                       workspace_bytes=1 << 30, environment=engine_environment())  # doctest: +SKIP
>>> save_engine("out/engine", blob, info)                                              # doctest: +SKIP
>>> engine, info = load_engine("out/engine")                                           # doctest: +SKIP
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..atomic import atomic_write, atomic_write_json
from ..errors import UserInputError
from ..version import __version__

__all__ = [
    "ENGINE_FILE", "SIDECAR_FILE", "REQUIRED_FIELDS", "engine_environment", "engine_sidecar", "save_engine",
    "read_engine_sidecar", "check_engine_compatible", "load_engine", "is_engine_dir", "build_engine_dir",
    "CALIB_CACHE_FILE",
]

ENGINE_FILE = "model.engine"
SIDECAR_FILE = "model.engine.json"
CALIB_CACHE_FILE = "calibration.cache"
# Fields a sidecar must hold (dotted for nested ones), with the type each must have.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str, "precision": str, "profile": dict, "profile.input": str, "profile.min": list,
    "profile.opt": list, "profile.max": list, "workspace_bytes": int, "environment": dict,
    "environment.tensorrt": str, "environment.gpu_name": str, "environment.compute_capability": str,
    "onnx": dict, "onnx.sha256": str, "input_size": list,
}
# What the ONNX sidecar says about decoding the outputs, copied into the engine's sidecar.
_DECODE_FIELDS = ("model", "family", "num_classes", "category_ids", "class_names", "input_size", "input_spec",
                  "outputs", "with_nms", "nms", "task", "instance")


def _trt_version() -> str | None:
    """The installed TensorRT's version, or None when it does not import."""
    try:
        import tensorrt
    except Exception:  # ImportError, or a broken install
        return None
    return str(getattr(tensorrt, "__version__", "")) or None


def _driver_version() -> str | None:
    """The NVIDIA driver's version from pynvml when installed, else ``nvidia-smi``; None when neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or no NVML here
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


@functools.lru_cache(maxsize=None)
def engine_environment(device: int = 0) -> dict[str, str | None]:
    """What an engine built or loaded here depends on: ``tensorrt``, ``cuda`` (torch's CUDA runtime),
    ``driver``, ``gpu_name`` and ``compute_capability`` (``"8.9"``) of CUDA device ``device``.
    Each is None when absent here (no TensorRT, no CUDA device)."""
    import torch

    env: dict[str, str | None] = {"tensorrt": _trt_version(), "cuda": torch.version.cuda, "driver": None,
                                  "gpu_name": None, "compute_capability": None}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        env.update(gpu_name=torch.cuda.get_device_name(device), compute_capability=f"{major}.{minor}",
                   driver=_driver_version())
    return env


def _major_minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def engine_sidecar(onnx_path: str | os.PathLike, *, precision: str, input_size: Sequence[int],
                   batch: Sequence[int], workspace_bytes: int, environment: Mapping[str, Any],
                   int8_method: str | None = None, onnx_info: Mapping[str, Any] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """The sidecar of an engine built from ``onnx_path`` (profile ``batch = (min, opt, max)`` of
    ``3×H×W`` images) in ``environment``; decode fields come from ``onnx_info`` (the ONNX sidecar)."""
    from ..weights.download import sha256_file

    h, w = (int(s) for s in input_size)
    lo, opt, hi = (int(b) for b in batch)
    info = {k: onnx_info[k] for k in _DECODE_FIELDS if onnx_info and onnx_info.get(k) is not None}
    info.update({
        "format": "tensorrt-engine", "file": ENGINE_FILE, "precision": precision,
        "int8_method": int8_method if precision == "int8" else None,
        "profile": {"input": "images", "min": [lo, 3, h, w], "opt": [opt, 3, h, w], "max": [hi, 3, h, w]},
        "workspace_bytes": int(workspace_bytes), "environment": dict(environment),
        "onnx": {"path": str(Path(onnx_path).resolve()), "sha256": sha256_file(Path(onnx_path))},
        "input_size": [h, w], "detflow": __version__,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra,
    })
    return info


def build_engine_dir(folder: str | os.PathLike, onnx_path: str | os.PathLike, *, precision: str,
                     input_size: Sequence[int], batch: Sequence[int] = (1, 1, 1), workspace_bytes: int = 1 << 30,
                     int8_method: str | None = None, calib: Iterable[Any] | None = None,
                     calib_batch_size: int = 1) -> dict[str, Any]:
    """Build the engine of ``onnx_path`` and save it in ``folder`` (:func:`save_engine`); its sidecar.

    ``int8_method``: ``qdq`` (``onnx_path`` is a Q/DQ graph) or ``entropy`` (an fp32 graph calibrated
    on ``calib``, batches of ``calib_batch_size`` images; the scales are cached in
    ``folder/calibration.cache``, which a rebuild into the same folder reuses).
    """
    from .tensorrt import build_engine, entropy_calibrator

    if precision == "int8" and int8_method not in ("qdq", "entropy"):
        raise ValueError(f"int8_method: expected 'qdq' or 'entropy' for an int8 engine, got {int8_method!r}")
    folder = Path(folder)
    calibrator = None
    extra: dict[str, Any] = {}
    if precision == "int8" and int8_method == "entropy":
        if calib is None:
            raise ValueError("calib: entropy calibration needs calibration batches")
        folder.mkdir(parents=True, exist_ok=True)
        calibrator = entropy_calibrator(calib, batch_size=calib_batch_size, cache_file=folder / CALIB_CACHE_FILE)
    blob = build_engine(onnx_path, precision=precision, input_size=input_size, batch=batch,
                        workspace_bytes=workspace_bytes, calibrator=calibrator)
    if calibrator is not None:
        extra["calibration"] = {"batches": calibrator.used, "batch_size": int(calib_batch_size),
                                "cache": CALIB_CACHE_FILE}
    from .onnx import read_sidecar

    info = engine_sidecar(onnx_path, precision=precision, input_size=input_size, batch=batch,
                          workspace_bytes=workspace_bytes, environment=engine_environment(),
                          int8_method=int8_method, onnx_info=read_sidecar(onnx_path), **extra)
    save_engine(folder, blob, info)
    return info


def save_engine(folder: str | os.PathLike, blob: bytes, info: Mapping[str, Any]) -> Path:
    """Write ``folder/model.engine`` and its sidecar, each atomically (sidecar last, so a sidecar
    always describes a complete engine); refuses a sidecar missing a required field. Returns ``folder``."""
    folder = Path(folder)
    problem = _missing_field(info)
    if problem:
        raise ValueError(f"engine sidecar: {problem}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / ENGINE_FILE, bytes(blob))
    atomic_write_json(folder / SIDECAR_FILE, dict(info), indent=2, default=str)
    return folder


def _missing_field(info: Mapping[str, Any]) -> str | None:
    """The first required field ``info`` lacks or holds with the wrong type, as ``field: why``."""
    for dotted, kind in REQUIRED_FIELDS.items():
        value: Any = info
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is None:
            return f"{dotted}: missing"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{dotted}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
    return None


def is_engine_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding an engine or an engine sidecar."""
    path = Path(path)
    return path.is_dir() and ((path / SIDECAR_FILE).is_file() or (path / ENGINE_FILE).is_file())


def read_engine_sidecar(folder: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of the engine directory ``folder``.

    Raises:
        UserInputError: no sidecar, not JSON, or a required field missing / of the wrong type (one line
        naming the file and the field).
    """
    path = Path(folder) / SIDECAR_FILE
    hint = "rebuild the engine with `detflow export SOURCE --format engine`"
    if not path.is_file():
        raise UserInputError(f"{path}: missing engine sidecar (the engine's precision, profile, GPU and TensorRT "
                             f"version); {hint}")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"{path}: not a JSON engine sidecar ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); {hint}") from None
    if not isinstance(info, dict):
        raise UserInputError(f"{path}: not an engine sidecar (expected a JSON object, got "
                             f"{type(info).__name__}); {hint}")
    problem = _missing_field(info)
    if problem:
        raise UserInputError(f"{path}: {problem}; {hint}")
    return info


def check_engine_compatible(sidecar: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    """None when an engine with ``sidecar`` can run in environment ``here`` (see
    :func:`engine_environment`), else why not in one line: the GPU (name or compute capability)
    and the TensorRT major.minor must be the ones it was built with."""
    built = sidecar.get("environment") or {}
    problems = []
    if here.get("gpu_name") is None:
        problems.append(f"built for GPU {built.get('gpu_name')!r} (compute capability "
                        f"{built.get('compute_capability')}), but there is no CUDA GPU here")
    elif (built.get("gpu_name"), str(built.get("compute_capability"))) != (here["gpu_name"],
                                                                           str(here.get("compute_capability"))):
        problems.append(f"built for GPU {built.get('gpu_name')!r} (compute capability "
                        f"{built.get('compute_capability')}), this GPU is {here['gpu_name']!r} (compute capability "
                        f"{here.get('compute_capability')})")
    if here.get("tensorrt") is None:
        problems.append(f"built with TensorRT {built.get('tensorrt')}, but TensorRT is not installed here")
    elif _major_minor(built.get("tensorrt")) != _major_minor(here["tensorrt"]):
        problems.append(f"built with TensorRT {built.get('tensorrt')}, this is TensorRT {here['tensorrt']}")
    return "; ".join(problems) or None


def load_engine(folder: str | os.PathLike, *, here: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The deserialised ``tensorrt.ICudaEngine`` of the engine directory ``folder`` and its sidecar,
    after checking the sidecar against ``here`` (default :func:`engine_environment`).

    Raises:
        UserInputError: a missing / malformed sidecar, an engine built for another GPU or TensorRT
        version, or no TensorRT / CUDA here (one line naming the sidecar, recorded and current values).
        RuntimeFailure: TensorRT could not deserialise the file.
    """
    from ..errors import RuntimeFailure

    folder = Path(folder)
    info = read_engine_sidecar(folder)
    why = check_engine_compatible(info, engine_environment() if here is None else here)
    if why:
        raise UserInputError(f"{folder / SIDECAR_FILE}: engine refused: {why}; rebuild it here with "
                             "`detflow export SOURCE --format engine`")
    blob_path = folder / ENGINE_FILE
    if not blob_path.is_file():
        raise UserInputError(f"{blob_path}: missing engine file beside its sidecar")
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob_path.read_bytes())
    if engine is None:
        raise RuntimeFailure(f"{blob_path}: TensorRT {trt.__version__} could not deserialise the engine")
    return engine, info
