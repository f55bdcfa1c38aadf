"""GPU checks (``-m gpu``; skipped without CUDA, never run in CI): AMP training steps (fp16 with a
GradScaler, bf16), SyncBN in a 1-process NCCL group, the onnxruntime CUDA provider on an exported
graph, the TensorRT runner and saved engine directories (``detflow export --format engine``: fp16,
int8 from the Q/DQ graph, int8 entropy-calibrated; reloaded, run, refused when the sidecar names
another GPU or TensorRT). ``scripts/gpu_check.sh`` runs them on a GPU machine."""
from __future__ import annotations

import hashlib
import json
import math
import socket
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def engine_inputs(tmp_path_factory):
    """Synthetic data (8 images at 64 px) and an rtmdet_tiny checkpoint that detects boxes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from checkpoints import detecting_rtmdet_tiny
    from detflow.data import generate_synthetic

    synth = generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=8, image_size=64, seed=1, val_fraction=0.25)
    return synth, Path(detecting_rtmdet_tiny(synth, tmp_path_factory.mktemp("ckpt") / "ckpt"))


ENGINE_EXPORTS = {
    "fp16": (["--dynamic-batch", "1,2,4"], "fp16", None, "model.onnx"),
    "int8-qdq": (["--precision", "int8", "--calib", "{calib}"], "int8", "qdq", "model.int8.onnx"),
    "int8-entropy": (["--precision", "int8", "--int8", "entropy", "--calib", "{calib}", "--dynamic-batch", "1,2,2"],
                     "int8", "entropy", "model.onnx"),
}


@pytest.mark.parametrize("kind", list(ENGINE_EXPORTS))
def test_saved_engine_builds_reloads_and_predicts(kind, engine_inputs, tmp_path):
    pytest.importorskip("tensorrt")
    from detflow.bench.backends import make_runner
    from detflow.cli import main
    from detflow.export.engine_artifact import engine_environment, load_engine, read_engine_sidecar
    from detflow.predict import predict

    synth, ckpt = engine_inputs
    args, precision, method, graph = ENGINE_EXPORTS[kind]
    out = tmp_path / "engine"
    assert main(["export", str(ckpt), "--format", "engine", *(a.format(calib=synth.train_json) for a in args),
                 "--workspace", "512M", "--out", str(out)]) == 0
    info = read_engine_sidecar(out)
    here = engine_environment()
    assert info["precision"] == precision and info["int8_method"] == method and info["workspace_bytes"] == 512 << 20
    assert info["environment"]["gpu_name"] == here["gpu_name"] and info["environment"]["tensorrt"] == here["tensorrt"]
    assert Path(info["onnx"]["path"]) == out / graph  # relocated from the temporary build directory
    assert info["onnx"]["sha256"] == hashlib.sha256((out / graph).read_bytes()).hexdigest()
    assert info["class_names"] == ["a", "b", "c", "d"] and info["input_size"] == [64, 64]
    if method == "entropy":
        assert (out / "calibration.cache").stat().st_size > 0 and info["calibration"]["batch_size"] == 2
    engine, _ = load_engine(out)
    assert engine.num_io_tensors >= 3
    runner = make_runner(out, "tensorrt", input_size=(64, 64))
    assert runner.max_batch == info["profile"]["max"][0] and runner.precision == precision
    ref = make_runner(out / graph, "onnxruntime", input_size=(64, 64))
    x = torch.rand(1, 3, 64, 64)
    got, want = runner(x), ref(x)
    assert [a.shape for a in got] == [b.shape for b in want] and all(np.isfinite(a).all() for a in got)
    tolerance = 5e-2 if precision == "fp16" else 0.15  # scores (the last output) in [0, 1]
    assert float(np.abs(got[-1] - want[-1]).mean()) < tolerance
    results = predict(out, images_dir=synth.images_dir, out=tmp_path / "preds.json")
    assert results and {r["category_id"] for r in results} <= {1, 2, 3, 4}


def test_saved_engine_for_another_gpu_or_tensorrt_is_refused(engine_inputs, tmp_path, capsys):
    pytest.importorskip("tensorrt")
    from detflow.cli import main
    from detflow.errors import UserInputError
    from detflow.export.engine_artifact import SIDECAR_FILE, load_engine

    synth, ckpt = engine_inputs
    out = tmp_path / "engine"
    assert main(["export", str(ckpt), "--format", "engine", "--out", str(out)]) == 0
    info = json.loads((out / SIDECAR_FILE).read_text())
    for field, value in (("gpu_name", "Some Other GPU"), ("tensorrt", "7.0.0")):
        edited = {**info, "environment": {**info["environment"], field: value}}
        (out / SIDECAR_FILE).write_text(json.dumps(edited))
        with pytest.raises(UserInputError) as err:
            load_engine(out)
        assert value in str(err.value) and str(info["environment"][field]) in str(err.value)
        assert main(["predict", str(out), "--images", str(synth.images_dir), "--out", str(tmp_path / "p.json")]) == 2
        assert "engine refused" in capsys.readouterr().err
