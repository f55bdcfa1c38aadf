"""Inference backends for benchmarking and evaluating an artifact: torch (eager, ``torch.compile``),
ONNX Runtime (CPU, CUDA EP) and TensorRT (FP16 / INT8 engines built from the ONNX graph).

An *artifact* is one of: a checkpoint directory (fp32), a quantisation output directory
(``model.int8.onnx`` [+ ``model.int8.pt2``]), an export directory or ``.onnx`` file, a saved TensorRT
engine directory (``model.engine`` + ``model.engine.json``; runs on ``tensorrt`` only, after
:func:`detflow.export.engine_artifact.load_engine` checked it was built for this GPU and TensorRT),
or a model object. :func:`load_artifact` resolves it; :func:`make_runner` turns (artifact, backend) into a
:class:`Runner`: ``runner(images N×3×H×W float, normalised)`` → list of numpy outputs
(``boxes``, ``scores`` [+ ``mask_kernels``, ``mask_feat`` for instance models] — or the four fixed-size
NMS outputs when NMS is in the graph).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

import detmodels

from ..errors import RuntimeFailure, UserInputError
from ..paths import state_dir
from ..export.engine_artifact import is_engine_dir, load_engine, read_engine_sidecar
from ..export.onnx import DeployModule, export_onnx, ort_session, read_sidecar, resolve_model

__all__ = [
    "BACKENDS", "Artifact", "Runner", "load_artifact", "make_runner", "backend_status", "torch_threads",
    "onnx_is_int8",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch.compile", "onnxruntime", "onnxruntime-cuda", "tensorrt")


@dataclasses.dataclass
class Artifact:
    """A resolved artifact. ``kind``: checkpoint | quant | onnx | engine | model; ``precision``: fp32 | int8
    (| fp16 for an engine)."""

    name: str
    kind: str
    precision: str
    path: str | None = None
    onnx_path: str | None = None
    torch_program: str | None = None
    model: nn.Module | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def input_spec(self) -> detmodels.InputSpec:
        spec = self.info.get("input_spec")
        if spec:
            return detmodels.InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        if self.model is not None:
            return self.model.input_spec
        return detmodels.InputSpec()

    @property
    def input_size(self) -> tuple[int, int] | None:
        size = self.info.get("input_size")
        return tuple(size) if size else None  # type: ignore[return-value]


def onnx_is_int8(path: str | os.PathLike) -> bool:
    """Whether a graph holds QDQ / QLinear int8 nodes."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"})


def _model_input_spec(meta: dict) -> dict | None:
    """The pixel normalisation of the checkpoint's model (built on the meta device: no memory, no weights)."""
    if not meta.get("model"):
        return None
    with torch.device("meta"):
        model = detmodels.create_model(meta["model"], num_classes=int(meta.get("num_classes") or 80))
    return dataclasses.asdict(model.input_spec)


def _from_dir(path: Path, name: str) -> Artifact:
    if is_engine_dir(path):  # an engine export also holds the graph it was built from: the engine wins
        info = read_engine_sidecar(path)
        return Artifact(name, "engine", str(info["precision"]), str(path), info=info)
    if (path / "model.pt").is_file():
        meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").is_file() else {}
        return Artifact(name, "checkpoint", "fp32", str(path), info={"category_ids": meta.get("category_ids"),
                                                                      "class_names": meta.get("class_names"),
                                                                      "input_spec": _model_input_spec(meta)})
    if (path / "model.int8.onnx").is_file():
        pt2 = path / "model.int8.pt2"
        onnx_path = path / "model.int8.onnx"
        return Artifact(name, "quant", "int8", str(path), str(onnx_path), str(pt2) if pt2.is_file() else None,
                        info=read_sidecar(onnx_path))
    for candidate in ("model_nms.onnx", "model.onnx"):
        if (path / candidate).is_file():
            return _from_onnx(path / candidate, name)
    raise UserInputError(f"{path}: not a model artifact (expected a checkpoint, a quantisation output "
                         "directory with model.int8.onnx, or an export directory with model.onnx)")


def _from_onnx(path: Path, name: str) -> Artifact:
    info = read_sidecar(path)
    precision = info.get("precision") or ("int8" if onnx_is_int8(path) else "fp32")
    return Artifact(name, "onnx", precision, str(path), str(path), info=info)


def load_artifact(source: Any, name: str | None = None) -> Artifact:
    """Resolve a path, a model object or a ``BenchArtifact`` into an :class:`Artifact`."""
    if isinstance(source, Artifact):
        return source
    if hasattr(source, "path") and hasattr(source, "name") and hasattr(source, "model"):  # BenchArtifact
        target = source.model if source.model is not None else source.path
        art = load_artifact(target, source.name)
        if getattr(source, "precision", None):
            art.precision = source.precision
        return art
    if isinstance(source, nn.Module):
        return Artifact(name or type(source).__name__, "model", "fp32", model=source,
                        info={"category_ids": None})
    path = Path(source)
    label = name or path.name
    if path.is_dir():
        return _from_dir(path, label)
    if path.is_file() and path.suffix == ".onnx":
        return _from_onnx(path, label)
    raise UserInputError(f"{path}: no such artifact (expected a directory or an .onnx file)")


@functools.lru_cache(maxsize=None)
def backend_status(backend: str) -> str | None:
    """None when ``backend`` can run here, else why not (e.g. ``"not installed: No module named 'tensorrt'"``)."""
    if backend not in BACKENDS:
        raise UserInputError(f"benchmark: backends: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend.startswith("onnxruntime"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"not installed: {exc}"
        if backend == "onnxruntime-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "not installed: onnxruntime has no CUDAExecutionProvider here"
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # ImportError or a broken stub package
            return f"not installed: import tensorrt failed ({type(exc).__name__}: {exc})"
        if not torch.cuda.is_available():
            return "not installed: TensorRT needs a CUDA device"
    return None


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch on ``threads`` intra-op threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class Runner:
    """``fn(images)`` → list of numpy outputs. ``device`` is what ran it; ``nms_in_graph`` whether
    the outputs are already NMS-ed (``num_dets, det_boxes, det_scores, det_labels``); ``max_batch``
    the most images one call takes (a fixed-batch graph's batch; ``None``: any)."""

    backend: str
    precision: str
    device: str
    fn: Callable[[torch.Tensor], list[np.ndarray]]
    nms_in_graph: bool = False
    threads: int = 1
    max_batch: int | None = None
    note: str = ""

    def __call__(self, images: torch.Tensor) -> list[np.ndarray]:
        if self.backend.startswith("torch"):
            with torch_threads(self.threads), torch.inference_mode():
                return self.fn(images)
        return self.fn(images)


def _torch_module(art: Artifact) -> nn.Module:
    if art.kind in ("checkpoint", "model"):
        model = resolve_model(art.model if art.model is not None else art.path).model
        return DeployModule(detmodels.reparameterize_model(model)).eval()
    if art.kind == "quant" and art.torch_program:
        from ..quant.common import load_torch_program  # checks the digest detflow recorded before loading

        return load_torch_program(art.torch_program).module()
    raise UserInputError(f"artifact {art.name!r}: no torch form (an ONNX file runs on onnxruntime/tensorrt only)")


def _torch_fn(module: nn.Module, device: str) -> Callable[[torch.Tensor], list[np.ndarray]]:
    def run(images: torch.Tensor) -> list[np.ndarray]:
        outs = module(images.to(device))
        return [o.detach().float().cpu().numpy() for o in outs]
    return run


def _torch_runner(art: Artifact, compiled: bool, threads: int) -> Runner:
    module = _torch_module(art)
    device = "cuda" if torch.cuda.is_available() and art.precision != "int8" else "cpu"
    if device == "cuda":
        module = module.to(device)
    note = ""
    if compiled:
        if art.precision == "int8":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # lets inductor lower the PT2E Q/DQ patterns to int8 kernels
        module = torch.compile(module, dynamic=False)
        note = "torch.compile (inductor), compiled during warm-up"
    elif art.precision == "int8":
        note = "eager PT2E reference: Q/DQ ops around float kernels"
    backend = "torch.compile" if compiled else "torch"
    return Runner(backend, art.precision, _device_name(device), _torch_fn(module, device), threads=threads, note=note)


def _onnx_for(art: Artifact, input_size: tuple[int, int], work_dir: Path) -> str:
    """The artifact's ONNX graph at ``input_size``; checkpoints and models are exported on demand."""
    if art.onnx_path:
        size = art.input_size
        if size and tuple(size) != tuple(input_size):
            raise UserInputError(f"artifact {art.name!r}: its ONNX graph was exported at {size[0]}x{size[1]}, "
                                 f"not {input_size[0]}x{input_size[1]}; export/quantise it at that size")
        return art.onnx_path
    out = work_dir / f"{art.name}-{input_size[0]}x{input_size[1]}"
    if not (out / "model.onnx").is_file():
        result = export_onnx(art.model if art.model is not None else art.path, out, input_size=input_size)
        log.info("exported %s for onnxruntime/tensorrt (max |ORT - torch| %.2g)", art.name, result.max_abs_diff)
    sidecar = read_sidecar(out / "model.onnx")
    art.info.update({k: v for k, v in sidecar.items() if art.info.get(k) is None})
    return str(out / "model.onnx")


def _is_nms_graph(output_names: Sequence[str]) -> bool:
    """Whether a graph's outputs are the fixed-size NMS ones (not dense boxes/scores[/mask outputs])."""
    from ..export.nms import NMS_OUTPUTS

    names = list(output_names)
    if set(names) & set(NMS_OUTPUTS):
        return True
    return len(names) == 4 and "boxes" not in names  # a graph exported with other output names


def _ort_runner(art: Artifact, onnx_path: str, cuda: bool, threads: int) -> Runner:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort_session(onnx_path, threads=threads, providers=providers)
    name = session.get_inputs()[0].name
    nms = _is_nms_graph([o.name for o in session.get_outputs()])
    batch = session.get_inputs()[0].shape[0]  # an int for a graph exported with a fixed batch

    def run(images: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {name: images.detach().cpu().numpy().astype(np.float32, copy=False)})

    device = _device_name("cuda") if cuda else _device_name("cpu")
    backend = "onnxruntime-cuda" if cuda else "onnxruntime"
    return Runner(backend, art.precision, device, run, nms_in_graph=nms, threads=threads,
                  max_batch=batch if isinstance(batch, int) and batch > 0 else None)


def make_runner(
    artifact: Any,
    backend: str,
    *,
    input_size: tuple[int, int],
    threads: int = 1,
    max_batch: int = 8,
    work_dir: str | os.PathLike | None = None,
) -> Runner:
    """A :class:`Runner` for ``artifact`` on ``backend`` (see :data:`BACKENDS`).

    Raises:
        RuntimeFailure: the backend is not installed here. UserInputError: the artifact has no form
        this backend can run (e.g. an ONNX file on torch).
    """
    art = load_artifact(artifact)
    if art.kind == "engine":
        return _engine_runner(art, backend, input_size)
    status = backend_status(backend)
    if status is not None:
        raise RuntimeFailure(f"backend {backend!r} is {status}; install it or set missing_backend: skip")
    work = Path(work_dir) if work_dir else state_dir() / "bench"
    if backend in ("torch", "torch.compile"):
        return _torch_runner(art, backend == "torch.compile", threads)
    onnx_path = _onnx_for(art, input_size, work)
    if backend.startswith("onnxruntime"):
        return _ort_runner(art, onnx_path, backend == "onnxruntime-cuda", threads)
    return _tensorrt_runner(art, onnx_path, input_size=input_size, max_batch=max_batch)


def _build_trt_engine(onnx_path: str, precision: str, input_size: tuple[int, int], max_batch: int):
    """TensorRT engine of ``onnx_path`` (:func:`detflow.export.tensorrt.build_engine`, profile 1..max_batch)."""
    import tensorrt as trt

    from ..export.tensorrt import build_engine

    blob = build_engine(onnx_path, precision=precision, input_size=input_size, batch=(1, max_batch, max_batch))
    return trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)


def _engine_runner(art: Artifact, backend: str, input_size: tuple[int, int]) -> Runner:
    """The runner of a saved engine directory: refused on another backend, another input size, or
    (by :func:`load_engine`) a GPU / TensorRT it was not built for."""
    if backend != "tensorrt":
        raise UserInputError(f"artifact {art.name!r}: a TensorRT engine directory runs on backend tensorrt only, "
                             f"not {backend!r}")
    size = art.input_size
    if size and tuple(size) != tuple(input_size):
        raise UserInputError(f"artifact {art.name!r}: the engine was built for {size[0]}x{size[1]} inputs, not "
                             f"{input_size[0]}x{input_size[1]}")
    engine, info = load_engine(art.path)
    method = info.get("int8_method")
    note = {"qdq": "saved engine, explicit quantisation (Q/DQ graph)",
            "entropy": "saved engine, entropy-calibrated int8"}.get(method or "", "saved FP16 engine")
    return _trt_engine_runner(engine, art.precision, max_batch=int(info["profile"]["max"][0]), note=note)


def _tensorrt_runner(art: Artifact, onnx_path: str, *, input_size: tuple[int, int], max_batch: int) -> Runner:
    """TensorRT engine runner, the engine built from ``onnx_path`` now."""
    precision = "int8" if art.precision == "int8" else "fp16"
    engine = _build_trt_engine(onnx_path, precision, input_size, max_batch)
    note = "explicit quantisation from the Q/DQ graph" if precision == "int8" else "FP16 engine from the fp32 ONNX"
    return _trt_engine_runner(engine, precision, max_batch=max_batch, note=note)


def _trt_engine_runner(engine: Any, precision: str, *, max_batch: int, note: str) -> Runner:
    """A runner of a deserialised engine; inputs/outputs live in torch CUDA tensors (copies are timed)."""
    import tensorrt as trt

    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(images: torch.Tensor) -> list[np.ndarray]:
        stream = torch.cuda.current_stream()  # the copies and the engine share one stream
        x = images.to("cuda", torch.float32).contiguous()
        if not context.set_input_shape("images", tuple(x.shape)):  # False: outside the optimisation profile
            raise ValueError(f"TensorRT engine: input shape {tuple(x.shape)} is outside its profile "
                             f"(batch up to {max_batch})")
        context.set_tensor_address("images", x.data_ptr())
        bufs = []
        for name in outputs:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, buf.data_ptr())
            bufs.append(buf)
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [b.cpu().numpy() for b in bufs]

    return Runner("tensorrt", precision, _device_name("cuda"), run, nms_in_graph=_is_nms_graph(outputs),
                  max_batch=max_batch, note=note)


@functools.lru_cache(maxsize=None)
def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu:{line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    import platform

    return f"cpu:{platform.processor() or platform.machine()}"
