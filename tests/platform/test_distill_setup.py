"""How a training run sets up distillation: ``distill.temperature`` / ``distill.feature`` reach the student and
the teacher, the teacher is frozen and (YOLOv6 DLD) still returns its DFL distributions, and a bad ``distill``
section is refused on the driver with a one-line error."""
import pytest
import torch

import detmodels
from detflow.config.train import TrainConfig
from detflow.engine import checkpoint as ckpt_io
from detflow.errors import ConfigError, UserInputError
from detflow.train.runner import check_distill
from detflow.train.worker import build_teacher


def _config(teacher: str, model: dict, **distill) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "kd", "model": model,
        "data": {"train": {"annotations": "train.json", "images": "images"}, "image_size": 64},
        "distill": {"teacher": teacher, **distill}})


def _teacher_checkpoint(tmp_path, model: dict):
    overrides = {k: v for k, v in model.items() if k != "name"}
    net = detmodels.create_model(model["name"], num_classes=2, options=detmodels.variant_options(model["name"], overrides))
    cfg = _config("unused", model)
    return ckpt_io.save_checkpoint(tmp_path / "teacher", state={"model": net.state_dict()}, config=cfg,
                                   meta={"model": model["name"], "num_classes": 2})


def test_build_teacher_applies_the_distill_section(tmp_path):
    model = {"name": "yolov6_n", "head": {"dld": True}}
    path = _teacher_checkpoint(tmp_path, model)
    cfg = _config(str(path), model, temperature=4.0, feature=True)
    dld = detmodels.variant_options("yolov6_n", {"head": {"dld": True}})
    student = detmodels.create_model("yolov6_n", num_classes=2, options=dld)
    teacher = build_teacher(cfg, student, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert student.distill_temperature == teacher.distill_temperature == 4.0
    with torch.no_grad():
        out = teacher(torch.rand(1, 3, 64, 64))
    assert {"box_dfl", "feats"} <= set(out)  # DLD distributions and features for the student's KD terms
    assert build_teacher(cfg.model_copy(update={"distill": None}), student, torch.device("cpu")) is None


def test_family_default_temperature_is_kept_when_unset(tmp_path):
    model = {"name": "yolov6_n"}
    cfg = _config(str(_teacher_checkpoint(tmp_path, model)), model)
    student = detmodels.create_model("yolov6_n", num_classes=2)
    build_teacher(cfg, student, torch.device("cpu"))
    assert student.distill_temperature == 20.0  # YOLOv6 §2.4


def test_check_distill_refuses_a_bad_section(tmp_path):
    with pytest.raises(UserInputError, match="missing-teacher: not a detflow checkpoint directory"):
        check_distill(_config(str(tmp_path / "missing-teacher"), {"name": "rtmdet_tiny"}))
    path = _teacher_checkpoint(tmp_path, {"name": "rtmdet_tiny"})
    with pytest.raises(ConfigError, match="distill.feature: rtmdet_tiny has no feature distillation"):
        check_distill(_config(str(path), {"name": "rtmdet_tiny"}, feature=True))
    check_distill(_config(str(path), {"name": "rtmdet_tiny"}))  # a good section passes
