"""The detector protocol every family implements (detectron2-style one-way interface).

A detector's ``forward`` returns *raw* head outputs, per level, ``N×C×H×W`` and pre-activation,
in the layout of the family's reference implementation. Training and inference are separate
methods so that the platform's single training loop drives every family the same way::

    outputs = model(images)                       # dict[str, list[Tensor] | Tensor]
    losses = model.loss(outputs, targets)          # dict[str, Tensor], keys start with "loss_"
    dets = model.postprocess(outputs, image_sizes) # list[Detections]
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .ops.postprocess import dense_postprocess
from .ops.precision import float32_guard
from .structures import Detections, InputSpec, Target

__all__ = ["Detector", "RawOutputs"]

RawOutputs = dict[str, Any]


class Detector(nn.Module, abc.ABC):
    """Base class of all detmodels detectors.

    Class attributes set by each family:
        family: family name (``rtmdet``, ``yolov6``, ``spinenet``, ``yolov3_asff``).
        task: ``bbox`` or ``segm``.
        input_spec: pixel normalisation the model was trained with.
        has_unused_train_params: True when ``loss`` may leave some trainable parameters without a
            gradient in a training step (a branch used only by inference or only by some batches).
            DDP then has to search the autograd graph for them each step
            (``find_unused_parameters=True``); families keep it False by making every parameter
            reach the loss (a ``0 *`` term when a batch has no positives).
        distill_temperature: the family's default KD temperature (1 for the generic logit KD).
        supports_feature_distill: ``forward`` can add the neck features (``"feats"``) for feature KD.
    Instance attributes:
        num_classes: number of foreground classes.
        strides: output strides of the head levels, e.g. ``(8, 16, 32)``.
    """

    family: str = ""
    task: str = "bbox"
    input_spec: InputSpec = InputSpec()
    has_unused_train_params: bool = False
    distill_temperature: float = 1.0
    supports_feature_distill: bool = False

    def __init__(self, num_classes: int, strides: Sequence[int]):
        super().__init__()
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        self._epoch = 0
        self._max_epochs = 1
        self.distill_feat = False

    # ----------------------------------------------------------------- required
    @abc.abstractmethod
    def forward(self, images: Tensor) -> RawOutputs:
        """Raw per-level head outputs for ``images`` (``N×3×H×W``)."""

    @abc.abstractmethod
    def loss(self, outputs: RawOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        """Training losses; every key starts with ``loss_``; their sum is optimised."""

    @abc.abstractmethod
    def decode(self, outputs: RawOutputs) -> tuple[Tensor, Tensor]:
        """Dense, traceable decode used by export and ``postprocess``.

        Returns:
            boxes: ``N×A×4`` xyxy in input pixels; scores: ``N×A×C`` in ``[0, 1]``.
        """

    @abc.abstractmethod
    def postprocess(
        self,
        outputs: RawOutputs,
        image_sizes: Sequence[tuple[int, int]],
        score_thr: float = 0.05,
        nms_iou: float = 0.6,
        max_det: int = 100,
        scale_factors: Sequence[float] | None = None,
    ) -> list[Detections]:
        """Per-image detections in original image pixels (see ``structures`` for the letterbox rule)."""

    # ----------------------------------------------------------------- shared by the families
    def _input_hw(self, outputs: RawOutputs, key: str = "cls") -> tuple[int, int]:
        """Network input ``(H, W)``: the first level of ``outputs[key]`` times ``strides[0]``."""
        h, w = outputs[key][0].shape[-2:]
        return h * self.strides[0], w * self.strides[0]

    def _dense_postprocess(self, outputs: RawOutputs, image_sizes: Sequence[tuple[int, int]], score_thr: float,
                           nms_iou: float, max_det: int, scale_factors: Sequence[float] | None, *,
                           key: str = "cls", pre_nms_topk: int = 30000) -> list[Detections]:
        """``postprocess`` of a dense detector: :meth:`decode`, then :func:`~detmodels.ops.dense_postprocess`
        (score filter, class-aware NMS, rescale) at the input size read from ``outputs[key]``."""
        boxes, scores = self.decode(outputs)
        return dense_postprocess(boxes, scores, self._input_hw(outputs, key), image_sizes, score_thr, nms_iou,
                                 max_det, scale_factors, pre_nms_topk=pre_nms_topk)

    # ----------------------------------------------------------------- optional hooks
    def set_epoch(self, epoch: int, max_epochs: int) -> None:
        """Told by the training loop at each epoch start (e.g. ATSS warm-up, distillation decay)."""
        self._epoch, self._max_epochs = int(epoch), max(int(max_epochs), 1)

    # ----------------------------------------------------------------- distillation
    def configure_distillation(self, *, temperature: float | None = None, feature: bool = False) -> None:
        """Set on the student and on the teacher before distilling: the KD temperature (``None`` keeps
        the family's default) and whether ``forward`` also returns the features for feature KD."""
        if feature and not self.supports_feature_distill:
            raise ValueError(f"{type(self).__name__}: feature distillation is not available for this family; "
                             "expected distill.feature: false")
        if temperature is not None:
            if temperature <= 0:
                raise ValueError(f"distillation temperature must be > 0, got {temperature}")
            self.distill_temperature = float(temperature)
        self.distill_feat = bool(feature)

    def as_teacher(self) -> "Detector":
        """This model, frozen in eval mode, as a distillation teacher. Families whose
        :meth:`distill_loss` reads training-only outputs of the teacher (YOLOv6's DLD distributions)
        keep emitting them here."""
        self.eval()
        self.requires_grad_(False)
        return self

    @float32_guard
    def distill_loss(
        self, student: RawOutputs, teacher: RawOutputs, targets: Sequence[Target], weight: float = 1.0
    ) -> dict[str, Tensor]:
        """Knowledge-distillation terms against a teacher's raw outputs.

        The default is logit KD on the class scores (sigmoid-BCE of ``s/T`` to the teacher's
        ``sigmoid(t/T)``, × T²; T = :attr:`distill_temperature`) plus an L1 term on the box regression
        maps, for families without their own recipe. Families override it (YOLOv6 §2.4: KL on class
        scores and DFL distributions at T = 20).
        """
        temp = self.distill_temperature
        cls_terms, box_terms = [], []
        for s, t in zip(student["cls"], teacher["cls"]):
            cls_terms.append(temp**2 * nn.functional.binary_cross_entropy_with_logits(
                s / temp, (t.detach() / temp).sigmoid(), reduction="mean"))
        for s, t in zip(student["box"], teacher["box"]):
            box_terms.append((s - t.detach()).abs().mean())
        return {
            "loss_kd_cls": weight * torch.stack(cls_terms).mean(),
            "loss_kd_box": weight * torch.stack(box_terms).mean(),
        }

    #: Names of the :meth:`deploy_outputs` tensors, in order (the exported graph's output names).
    deploy_output_names: tuple[str, ...] = ("boxes", "scores")

    def deploy_decode(self, outputs: RawOutputs) -> tuple[Tensor, ...]:
        """Raw ``forward`` outputs → the deploy tensors named by :attr:`deploy_output_names`
        (``decode`` for detectors; instance models add what their masks need)."""
        return self.decode(outputs)

    def deploy_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """``forward`` + :meth:`deploy_decode`: the graph exported to ONNX (boxes ``N×A×4``, scores
        ``N×A×C``, then any extra outputs of :attr:`deploy_output_names`)."""
        return self.deploy_decode(self(images))
