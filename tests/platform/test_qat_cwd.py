"""QAT with channel-wise distillation (YOLOv6 tools/qat): the fp32 model teaches the fake-quant student
on the neck features; the CWD term is recorded, falls while fine-tuning, and the int8 ONNX still exports
without the features. Without ``distill`` there is no such term; bad settings are one-line errors."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import detmodels
from detflow.errors import UserInputError
from detflow.export import ort_session
from detflow.quant import CWDConfig, run_qat
from detflow.quant.distill import distill_config, features_in_outputs

_spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)

SIZE = deploy.BOX_SIZE
box_batches, yolov6_n = deploy.box_batches, deploy.yolov6_n


def test_qat_with_cwd_records_a_falling_term_and_exports_int8(tmp_path):
    steps = 4
    result = run_qat(yolov6_n(), tmp_path, data=box_batches(batch=2) * steps, epochs=1, lr=1e-5,
                     distill={"weight": 10.0})
    m = result.metrics
    cwd = m["cwd_steps"]
    assert len(cwd) == steps and all(math.isfinite(v) and v > 0 for v in cwd)
    assert cwd[-1] < 0.8 * cwd[0]  # the same batch each step: the student moves towards the teacher
    assert m["cwd_history"] == [pytest.approx(sum(cwd) / steps)] and m["final_cwd"] == m["cwd_history"][-1]
    assert m["distill"] == {"method": "channel_wise", "weight": 10.0, "temperature": 1.0,
                            "teacher": "fp32 re-parameterised source", "features": "neck outputs"}
    assert m["loss_history"][0] > m["cwd_history"][0]  # the total holds the detection loss too
    # the int8 graph: images → boxes, scores (the features are dropped), runs in ORT with a dynamic batch
    sess = ort_session(result.onnx_path)
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores"]
    boxes, scores = sess.run(None, {"images": box_batches(batch=3)[0][0].numpy()})
    assert boxes.shape == (3, 84, 4) and scores.shape == (3, 84, 4) and np.isfinite(scores).all()
    assert m["qdq_nodes"]["QuantizeLinear"] > 0 and 0 < m["fp32_score_mean_abs_diff"] < 0.02
    meta = json.loads((Path(result.checkpoint) / "meta.json").read_text())
    assert meta["quantization"]["cwd_history"] == m["cwd_history"]


def test_qat_without_distill_records_no_cwd(tmp_path):
    result = run_qat(yolov6_n(), tmp_path, data=box_batches(batch=2) * 2, epochs=1, lr=1e-5)
    m = result.metrics
    assert m["distill"] is None and not {"cwd_history", "cwd_steps", "final_cwd"} & set(m)
    assert len(m["loss_history"]) == 1 and math.isfinite(m["final_loss"])
    assert m["qdq_nodes"]["QuantizeLinear"] > 0


@pytest.mark.parametrize("name", ["yolov6_n", "rtmdet_tiny", "yolov3_asff"])
def test_features_are_the_head_inputs_of_any_family_with_a_neck(name):
    model = detmodels.create_model(name, num_classes=4).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        plain = model(x)
        with features_in_outputs(model) as module:
            out = model(x)
        after = model(x)
    assert module == "neck" and "feats" not in plain and "feats" not in after  # the hooks are gone after
    feats = out["feats"]
    assert len(feats) == len(model.strides)
    assert [f.shape[-1] for f in feats] == [SIZE // s for s in model.strides]
    assert all(torch.equal(a, b) for a, b in zip(out["cls"], plain["cls"]))


@pytest.mark.parametrize("value, needle", [
    ({"weight": -1.0}, "QAT distill.weight: expected a finite number > 0, got -1.0"),
    ({"temperature": 0}, "QAT distill.temperature: expected a finite number > 0, got 0"),
    ({"weight": "ten"}, "QAT distill.weight: expected a finite number > 0, got 'ten'"),
    ({"tau": 2.0}, "QAT distill: unknown key 'tau' (expected weight, temperature)"),
])
def test_bad_distill_settings_are_one_line_errors(value, needle, tmp_path):
    with pytest.raises(UserInputError) as err:
        run_qat(yolov6_n(), tmp_path / "out", data=box_batches(), epochs=1, distill=value)
    assert str(err.value) == needle
    assert not (tmp_path / "out").exists()


def test_distill_needs_a_neck_or_backbone(tmp_path):
    with pytest.raises(UserInputError, match="the tiny model has no neck or backbone module"):
        run_qat(deploy.tiny_model(), tmp_path / "out", data=deploy.random_batches(), epochs=1, distill=True)
    assert not (tmp_path / "out").exists()


def test_distill_config_and_step_params():
    from pydantic import ValidationError

    from detflow.workflows.schema import QATParams

    assert distill_config(None) is None and distill_config(False) is None
    assert distill_config(True) == CWDConfig(10.0, 1.0) == distill_config({})
    assert distill_config({"temperature": 2}) == CWDConfig(10.0, 2.0)
    assert QATParams(checkpoint="train").distill is None
    params = QATParams(checkpoint="train", distill={})
    assert distill_config(params.distill.model_dump()) == CWDConfig(10.0, 1.0)
    with pytest.raises(ValidationError, match="distill.weight"):
        QATParams(checkpoint="train", distill={"weight": 0})
