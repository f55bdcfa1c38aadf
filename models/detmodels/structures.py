"""Data structures exchanged between detectors and the platform.

Conventions (all families):

* ``images``: float tensor ``N×3×H×W``, already normalised with the model's
  :class:`InputSpec` (mean/std, channel order). ``H`` and ``W`` are multiples of the largest stride.
* ``targets``: one :class:`Target` per image, boxes in *input* pixels (after resize/pad).
* Letterbox convention: an image of size ``(h, w)`` is resized by ``s = min(H/h, W/w)`` (keep ratio)
  and padded on the right and bottom. ``postprocess`` maps boxes back to image pixels by ``/ s``
  unless explicit ``scale_factors`` are given.
"""
from __future__ import annotations

import dataclasses
from typing import TypedDict

import torch
from torch import Tensor

__all__ = ["Target", "Detections", "InputSpec"]


class Target(TypedDict, total=False):
    """Ground truth of one image.

    Keys:
        boxes: ``M×4`` float, xyxy in input pixels.
        labels: ``M`` long, contiguous class indices in ``[0, num_classes)``.
        masks: ``M×H×W`` uint8/bool instance masks at input resolution (instance segmentation only).
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor


@dataclasses.dataclass
class Detections:
    """Post-processed detections of one image (``K`` kept boxes).

    Attributes:
        boxes: ``K×4`` float, xyxy in original image pixels.
        scores: ``K`` float in ``[0, 1]``.
        labels: ``K`` long, contiguous class indices.
        masks: ``K×h×w`` bool at original image size, for instance segmentation; else ``None``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None

    @classmethod
    def empty(cls, device: torch.device | str = "cpu", with_masks: bool = False, hw=(0, 0)):
        masks = torch.zeros((0, *hw), dtype=torch.bool, device=device) if with_masks else None
        return cls(
            torch.zeros((0, 4), device=device),
            torch.zeros((0,), device=device),
            torch.zeros((0,), dtype=torch.long, device=device),
            masks,
        )


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How a model wants its pixels: ``(x[c] - mean[c]) / std[c]`` in ``channel_order``.

    mean/std are on the 0–255 scale and given in the model's channel order.
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    channel_order: str = "RGB"  # or "BGR"
    pad_value: float = 114.0
