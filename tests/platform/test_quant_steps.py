"""The ``ptq`` and ``qat`` workflow steps (called directly, no Ray) pass ``keep_float`` and ``distill`` through
on a real rtmdet_tiny checkpoint: partial PTQ keeps convs float, QAT distils the neck features of a
family other than YOLOv6."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from detflow.workflows.context import StepContext
from detflow.workflows.schema import PTQParams, QATParams
from detflow.workflows.steps.quant import run_ptq, run_qat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from checkpoints import detecting_rtmdet_tiny  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=6, image_size=64, seed=1, val_fraction=0.34)


@pytest.fixture(scope="module")
def ckpt(synth, tmp_path_factory) -> Path:
    return Path(detecting_rtmdet_tiny(synth, tmp_path_factory.mktemp("ckpt") / "best"))


def _ctx(kind: str, ckpt: Path, tmp_path: Path) -> StepContext:
    return StepContext("run-1", kind, kind, "wf", str(tmp_path / "store"), inputs={"train": {"checkpoint": str(ckpt)}},
                       scratch=str(tmp_path / "scratch"))


def _data(synth) -> dict:
    return {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)}}


def test_ptq_step_keeps_float(ckpt, synth, tmp_path):
    params = PTQParams(checkpoint="train", data=_data(synth), calib_batches=1, keep_float=2)
    out = run_ptq(params, _ctx("ptq", ckpt, tmp_path))
    assert out["metrics"]["keep_float"] == 2 and out["precision"] == "int8"
    report = json.loads((Path(out["checkpoint"]) / "sensitivity.json").read_text())
    meta = json.loads((Path(out["checkpoint"]) / "meta.json").read_text())
    assert len(report["kept_float"]) == 2 and meta["quantization"]["kept_float"] == report["kept_float"]
    assert set(report["kept_float"]) <= set(meta["quantization"]["float_modules"])


def test_qat_step_distils_rtmdet_neck_features(ckpt, synth, tmp_path):
    params = QATParams(checkpoint="train", data=_data(synth), epochs=1, max_steps_per_epoch=2,
                       distill={"temperature": 2.0})
    out = run_qat(params, _ctx("qat", ckpt, tmp_path))
    assert math.isfinite(out["metrics"]["final_cwd"]) and out["metrics"]["final_cwd"] > 0
    meta = json.loads((Path(out["checkpoint"]) / "meta.json").read_text())["quantization"]
    assert meta["distill"]["weight"] == 10.0 and meta["distill"]["temperature"] == 2.0
    assert meta["distill"]["features"] == "neck outputs" and len(meta["cwd_steps"]) == 1  # 4 images: one batch
