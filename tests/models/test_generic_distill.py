"""The generic distillation API of :class:`detmodels.Detector` for the families without their own KD recipe:
``configure_distillation`` (temperature, feature switch), ``as_teacher`` and the default ``distill_loss``
(temperature-scaled logit KD on class scores + L1 on the box maps)."""
import pytest
import torch

import detmodels

FAMILIES = ["rtmdet_tiny", "rtmdet_ins_tiny", "spinenet_49s", "yolov3_asff"]
TARGETS = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[60.0, 30.0, 120.0, 90.0]]), "labels": torch.tensor([0])}]


def _pair(name: str):
    torch.manual_seed(0)
    student = detmodels.create_model(name, num_classes=3)
    teacher = detmodels.create_model(name, num_classes=3).as_teacher()
    return student, teacher


@pytest.mark.parametrize("name", FAMILIES)
def test_generic_kd_terms_train_the_student(name):
    student, teacher = _pair(name)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 128, 128)  # SpineNet's P7 is 1×1 at 128 px: BN needs two images
    with torch.no_grad():
        t_out = teacher(x)
    losses = student.distill_loss(student(x), t_out, TARGETS, weight=0.5)
    assert set(losses) == {"loss_kd_cls", "loss_kd_box"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_generic_kd_temperature_scales_the_class_term():
    student, teacher = _pair("rtmdet_tiny")
    x = torch.rand(1, 3, 64, 64)
    s_out = student(x)
    with torch.no_grad():
        t_out = teacher(x)
    assert student.distill_temperature == 1.0
    at_1 = student.distill_loss(s_out, t_out, TARGETS)["loss_kd_cls"]
    student.configure_distillation(temperature=4.0)
    at_4 = student.distill_loss(s_out, t_out, TARGETS)["loss_kd_cls"]
    cls = [(s / 4.0, (t / 4.0).sigmoid()) for s, t in zip(s_out["cls"], t_out["cls"])]
    by_hand = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(s, p) for s, p in cls]).mean() * 16
    assert at_4.item() == pytest.approx(by_hand.item(), rel=1e-5) and at_4.item() != pytest.approx(at_1.item())


def test_feature_distillation_is_refused_where_the_family_has_none():
    model = detmodels.create_model("rtmdet_tiny", num_classes=3)
    with pytest.raises(ValueError, match="feature distillation is not available"):
        model.configure_distillation(feature=True)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.configure_distillation(temperature=0.0)
