"""GPU checks (``-m gpu``; skipped without CUDA, never run in CI): AMP training steps (fp16 with a
GradScaler, bf16), SyncBN in a 1-process NCCL group, the onnxruntime CUDA provider on an exported
graph and the TensorRT runner. ``scripts/gpu_check.sh`` runs them on a GPU machine."""
from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

import detmodels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class _NoSchedule:
    def step(self) -> None:
        pass


def _batch(device: str, n: int = 2, size: int = 128):
    torch.manual_seed(0)
    targets = [{"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 40, 120, 110]], device=device),
                "labels": torch.tensor([0, 2], device=device)} for _ in range(n)]
    return torch.rand(n, 3, size, size, device=device), targets


@pytest.mark.parametrize("amp,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cuda_amp_training_steps(amp, dtype):
    from detflow.engine.loop import TrainLoop

    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = detmodels.create_model("rtmdet_tiny", num_classes=3).cuda().train()
    seen: set[torch.dtype] = set()
    model.backbone.register_forward_hook(lambda m, i, o: seen.update(t.dtype for t in o))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loop = TrainLoop(model, opt, _NoSchedule(), device="cuda", amp=amp, grad_clip=10.0)
    assert loop.amp_dtype == dtype and loop.scaler.is_enabled() == (amp == "fp16")
    images, targets = _batch("cuda")
    for _ in range(3):
        terms = loop.train_step(images, targets, epoch=0)
        assert all(math.isfinite(v) for v in terms.values()), terms
    assert seen == {dtype}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    if amp == "fp16":
        assert loop.scaler.get_scale() > 0 and "scale" in loop.state_dict()["scaler"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def nccl_group():
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("torch was built without NCCL")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def test_nccl_init_and_syncbn_ddp_step(nccl_group):
    dist = nccl_group
    assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
    t = torch.ones(3, device="cuda")
    dist.all_reduce(t)
    assert t.tolist() == [1.0, 1.0, 1.0]
    model = detmodels.create_model("rtmdet_tiny", num_classes=3)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).cuda().train()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    images, targets = _batch("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model.loss(ddp(images), targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _exported(tmp_path, size: int = 128):
    from detflow.export.onnx import export_onnx

    model = detmodels.create_model("rtmdet_tiny", num_classes=3).eval()
    result = export_onnx(model, tmp_path / "onnx", input_size=size)
    return model, result.onnx_path


def test_onnxruntime_cuda_provider_runs_an_exported_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    from detflow.export.onnx import ort_session

    _, path = _exported(tmp_path)
    x = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    cuda = ort_session(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda.get_providers()[0] == "CUDAExecutionProvider"
    cpu = ort_session(path)
    name = cuda.get_inputs()[0].name
    for a, b in zip(cuda.run(None, {name: x}), cpu.run(None, {name: x})):
        assert a.shape == b.shape and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=5e-2, rtol=1e-2)


def test_tensorrt_runner_builds_an_engine_and_matches_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt")
    from detflow.bench.backends import make_runner

    model, _ = _exported(tmp_path)
    runner = make_runner(model, "tensorrt", input_size=(128, 128), max_batch=2, work_dir=tmp_path / "work")
    assert runner.backend == "tensorrt" and runner.precision == "fp16" and runner.device.startswith("cuda")
    ref = make_runner(model, "onnxruntime", input_size=(128, 128), work_dir=tmp_path / "work")
    x = torch.rand(2, 3, 128, 128)
    trt_out, ort_out = runner(x), ref(x)
    assert len(trt_out) == len(ort_out)
    for a, b in zip(trt_out, ort_out):
        assert a.shape == b.shape and np.isfinite(a).all()
    # boxes then scores (DeployModule); FP16 engine: scores within a few hundredths
    np.testing.assert_allclose(trt_out[-1], ort_out[-1], atol=5e-2)
