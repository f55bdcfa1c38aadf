"""``train.amp`` on CPU: bf16 autocasts through the worker's real training path (config →
``build_model`` / ``build_train_data`` / ``_build_loop`` → ``TrainLoop.train_epoch``); fp16 is refused
for a CPU config and, given to the loop on CPU anyway, falls back to float32 with a one-line warning.
(Assignment / IoU / losses in float32 per family: tests/models/test_amp_float32.py.)"""
from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth_amp"), num_images=6, image_size=64, seed=5,
                              val_fraction=0.0)


def _raw(synth, storage, amp: str, gpus: float = 0) -> dict:
    return {"name": "amp", "model": {"name": "rtmdet_tiny"},
            "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                     "image_size": 64},
            "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "amp": amp,
                      "schedule": {"warmup_iters": 1}},
            "scaling": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": gpus},
            "storage": str(storage)}


def test_autocast_dtype_per_device():
    from detflow.engine.loop import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("bf16", cuda) == torch.bfloat16
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("fp16", cpu) is None
    assert autocast_dtype("off", cpu) is None and autocast_dtype("off", cuda) is None


def test_fp16_is_refused_for_cpu_workers_and_accepted_with_gpus(synth, tmp_path):
    from detflow.config import TrainConfig, parse_config
    from detflow.errors import ConfigError, UserInputError

    with pytest.raises(ConfigError) as err:
        parse_config(TrainConfig, _raw(synth, tmp_path, "fp16"), "amp.yaml")
    assert isinstance(err.value, UserInputError)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and "train.amp" in lines[0] and "fp16" in lines[0] and "gpus_per_worker" in lines[0]
    assert parse_config(TrainConfig, _raw(synth, tmp_path, "fp16", gpus=1), "amp.yaml").train.amp == "fp16"
    assert parse_config(TrainConfig, _raw(synth, tmp_path, "bf16"), "amp.yaml").train.amp == "bf16"


def test_fp16_loop_on_cpu_warns_once_and_trains_in_float32(capsys):
    from detflow.engine.loop import TrainLoop
    from detflow.engine.schedules import IterLRScheduler

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = IterLRScheduler.__new__(IterLRScheduler)  # not stepped here
    loop = TrainLoop(model, opt, sched, device="cpu", amp="fp16")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("warning: train.amp=fp16") and "float32" in out[0]
    assert loop.amp_dtype is None and not loop.scaler.is_enabled()
    bf16 = TrainLoop(model, opt, sched, device="cpu", amp="bf16")
    assert bf16.amp_dtype == torch.bfloat16 and not bf16.scaler.is_enabled()  # GradScaler: fp16 on CUDA only
    assert capsys.readouterr().out == ""


def test_bf16_trains_through_the_worker_training_path_on_cpu(synth, tmp_path):
    from detflow.config import TrainConfig, parse_config
    from detflow.train.data import build_train_data
    from detflow.train.runner import resolve_train_config
    from detflow.train.worker import _build_loop, build_model

    cfg = resolve_train_config(parse_config(TrainConfig, _raw(synth, tmp_path, "bf16"), "amp.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg, int(cfg.model.num_classes))
    data = build_train_data(cfg, model.input_spec)
    loop = _build_loop(cfg, model, data.recipe, data.steps_per_epoch, 1, torch.device("cpu"), None, progress=False)
    assert loop.amp_dtype == torch.bfloat16
    seen: set[torch.dtype] = set()
    model.backbone.register_forward_hook(lambda m, i, o: seen.update(t.dtype for t in o))
    stats = loop.train_epoch(data.train_loader(0), 0)
    assert stats.steps == 2 and seen == {torch.bfloat16}
    assert stats.losses and all(math.isfinite(v) for v in stats.losses.values())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
