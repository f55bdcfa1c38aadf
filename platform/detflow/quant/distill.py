"""Channel-wise distillation for QAT (YOLOv6 ``tools/qat``; CWD: Shu et al., ICCV 2021, arXiv 2011.13256).

The teacher is the fp32 re-parameterised model (a copy taken before fake-quant); the student is the
prepared QAT graph. Both return their neck features — the multi-level maps ``[N×C_l×H_l×W_l]`` the
head reads — beside the raw head outputs, under :data:`~.common.FEATURES_KEY`: a forward hook on the
feature module (``model.neck``, else ``model.backbone``) and one on the model put them in the output
dict, and ``torch.export`` traces both hooks into the student graph. The int8 deploy module drops
them again (:class:`~.common.QuantDeployModule`).

Loss term (YOLOv6 QAT: weight 10, T = 1)::

    loss_cwd = weight · Σ_levels T² / (N·C) · Σ_{n,c} KL(softmax_HW(t_nc / T) ‖ softmax_HW(s_nc / T))

(:func:`detmodels.channel_wise_distill`; the teacher side is detached).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

import detmodels

from ..errors import RuntimeFailure, UserInputError
from .common import FEATURES_KEY, split_features

__all__ = ["CWDConfig", "distill_config", "feature_module_name", "features_in_outputs", "CWDTeacher"]

FEATURE_MODULES = ("neck", "backbone")  # the first one a model has is the one whose output feeds the head


@dataclasses.dataclass(frozen=True)
class CWDConfig:
    """Channel-wise distillation settings: the loss ``weight`` and the softmax ``temperature`` (YOLOv6: 10, 1)."""

    weight: float = 10.0
    temperature: float = 1.0


def _positive(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise UserInputError(f"QAT distill.{field}: expected a finite number > 0, got {value!r}")
    return float(value)


def distill_config(value: Any) -> CWDConfig | None:
    """``None``/``False`` (no distillation), ``True`` (YOLOv6 defaults), a :class:`CWDConfig`, or a mapping /
    object with ``weight`` and ``temperature`` → a checked :class:`CWDConfig` or None.

    Raises:
        UserInputError: a weight or temperature that is not a finite number > 0, or an unknown key.
    """
    if value is None or value is False:
        return None
    if value is True:
        return CWDConfig()
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"weight", "temperature"})
        if unknown:
            raise UserInputError(f"QAT distill: unknown key {unknown[0]!r} (expected weight, temperature)")
        fields = {**dataclasses.asdict(CWDConfig()), **value}
    else:
        fields = {"weight": getattr(value, "weight", None), "temperature": getattr(value, "temperature", None)}
    return CWDConfig(weight=_positive(fields["weight"], "weight"),
                     temperature=_positive(fields["temperature"], "temperature"))


def feature_module_name(model: nn.Module) -> str:
    """``neck`` or ``backbone``: the sub-module whose output is the features the head reads.

    Raises:
        UserInputError: the model has neither.
    """
    for name in FEATURE_MODULES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    family = getattr(model, "family", "") or type(model).__name__
    raise UserInputError(f"QAT distill: the {family} model has no neck or backbone module to take the features "
                         "from; set distill to null")


@contextlib.contextmanager
def features_in_outputs(model: nn.Module) -> Iterator[str]:
    """While open, ``model(images)`` also returns its neck features (a list) under :data:`FEATURES_KEY`;
    yields the feature module's name."""
    name = feature_module_name(model)
    captured: list[list[Tensor]] = []

    def keep(_module: nn.Module, _args: tuple, out: Any) -> None:
        captured.append(list(out) if isinstance(out, (list, tuple)) else [out])

    def add(_module: nn.Module, _args: tuple, out: Any) -> Any:
        if not isinstance(out, dict):
            raise UserInputError(f"QAT distill: {type(model).__name__}.forward returns {type(out).__name__}, "
                                 "expected a dict of raw outputs")
        return {**out, FEATURES_KEY: captured.pop()}

    handles = [getattr(model, name).register_forward_hook(keep), model.register_forward_hook(add)]
    try:
        yield name
    finally:
        for handle in handles:
            handle.remove()


class CWDTeacher:
    """The frozen fp32 teacher and the CWD term of a student's neck features against it."""

    def __init__(self, teacher: nn.Module, config: CWDConfig):
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config

    @contextlib.contextmanager
    def active(self) -> Iterator["CWDTeacher"]:
        """The teacher returns its features while the block runs."""
        with features_in_outputs(self.teacher):
            yield self

    def loss(self, images: Tensor, student_feats: list[Tensor] | None) -> Tensor:
        """``weight · CWD(student_feats, teacher's features on images, T)`` (a scalar, teacher detached)."""
        if student_feats is None:
            raise RuntimeFailure("QAT distill: the student graph returned no neck features")
        with torch.no_grad():
            teacher_feats = split_features(self.teacher(images))[1]
        cwd = detmodels.channel_wise_distill(student_feats, teacher_feats, self.config.temperature)
        return self.config.weight * cwd
