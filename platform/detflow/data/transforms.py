"""Basic sample transforms: letterbox / keep-ratio resize, flips, padding and the final packing step.

A transform is a callable ``sample -> sample`` on the sample dicts of ``detflow.data`` (numpy
``image`` H×W×3 uint8 RGB, ``boxes`` M×4 xyxy pixels, ``labels`` M, ``masks`` M×H×W uint8 or None,
``image_id``, ``orig_size``, ``scale``). Geometry transforms keep boxes and masks consistent with
the image. :class:`PackDetInputs` is always last: it turns the sample into torch tensors, normalised
with the model's :class:`detmodels.InputSpec` — or, for training, left uint8 so the batch is
normalised on the device by :func:`normalize_images` (as MMDetection's data preprocessor does: the
loader workers skip a float pass per image and a GPU gets a 4× smaller host-to-device copy).

Letterbox convention (``detmodels.structures``): an ``h×w`` image is resized by
``s = min(H/h, W/w)`` and padded on the right and bottom, so ``boxes_orig = boxes_input / s``.

Random transforms own a ``numpy.random.Generator`` (``seed=``, ``reseed``), like those of
``detflow.data.geometric``; ``detflow.data.loader`` reseeds them in every DataLoader worker.
Sizes given as tuples are ``(height, width)``, like ``orig_size`` and ``input_size``.

Example::

    tf = Compose([LetterboxResize(320), RandomFlip(0.5), PackDetInputs(model.input_spec)])
    image, target, meta = tf(dataset.load_sample(0))
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .imageops import flip_columns, resize_bilinear, to_planes

__all__ = [
    "Compose", "LetterboxResize", "Resize", "RandomFlip", "Pad", "PackDetInputs",
    "build_val_transforms", "build_basic_train_transforms", "resize_sample", "pad_sample", "flip_sample",
    "normalize_images",
]

Sample = dict[str, Any]


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int means a square."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Compose:
    """Apply transforms in order. ``attach(dataset)`` is forwarded to those that mix samples."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Any) -> Any:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def attach(self, dataset: Any) -> None:
        for transform in self.transforms:
            if hasattr(transform, "attach"):
                transform.attach(dataset)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def resize_sample(sample: Sample, new_h: int, new_w: int, *, factor: float | None = None) -> Sample:
    """Resize image (bilinear), masks (nearest, pixel centres) and boxes to ``new_h×new_w``.

    Boxes are scaled by ``factor`` on both axes when given (a keep-ratio resize: the letterbox rule
    maps boxes back by exactly ``/ factor``, whatever the rounding of the image size), else by the
    per-axis ratios. ``scale`` is multiplied by the horizontal factor; ``scale_xy`` keeps both.
    """
    image = sample["image"]
    h, w = image.shape[:2]
    sx, sy = (factor, factor) if factor is not None else (new_w / w, new_h / h)
    out = dict(sample)
    if (new_h, new_w) != (h, w):
        out["image"] = resize_bilinear(image, new_w, new_h)
        masks = sample.get("masks")
        if masks is not None:
            rows = np.minimum(((np.arange(new_h) + 0.5) * (h / new_h)).astype(np.int64), h - 1)
            cols = np.minimum(((np.arange(new_w) + 0.5) * (w / new_w)).astype(np.int64), w - 1)
            out["masks"] = np.ascontiguousarray(masks[:, rows][:, :, cols])
    out["boxes"] = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
    prev_x, prev_y = sample.get("scale_xy", (sample.get("scale", 1.0),) * 2)
    out["scale_xy"] = (float(prev_x) * sx, float(prev_y) * sy)
    out["scale"] = float(sample.get("scale", 1.0)) * sx
    return out


def pad_sample(sample: Sample, height: int, width: int, value: float = 114) -> Sample:
    """Pad image (``value``) and masks (0) on the right and bottom to ``height×width``."""
    image = sample["image"]
    h, w = image.shape[:2]
    if height < h or width < w:
        raise ValueError(f"cannot pad a {h}x{w} image to a smaller {height}x{width}")
    if (height, width) == (h, w):
        return sample
    out = dict(sample)
    canvas = np.full((height, width, image.shape[2]), value, dtype=image.dtype)
    canvas[:h, :w] = image
    out["image"] = canvas
    masks = sample.get("masks")
    if masks is not None:
        padded = np.zeros((masks.shape[0], height, width), dtype=masks.dtype)
        padded[:, :h, :w] = masks
        out["masks"] = padded
    return out


class Resize:
    """Resize to ``size`` (int or (h, w)): ``keep_ratio`` fits the image inside it by
    ``s = min(H/h, W/w)`` without padding; otherwise the image is stretched to exactly ``size``."""

    def __init__(self, size: int | Sequence[int], keep_ratio: bool = True):
        self.size = _hw(size)
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[:2]
        big_h, big_w = self.size
        if not self.keep_ratio:
            return resize_sample(sample, big_h, big_w)
        s = min(big_h / h, big_w / w)
        new_h, new_w = min(big_h, max(1, int(round(h * s)))), min(big_w, max(1, int(round(w * s))))
        return resize_sample(sample, new_h, new_w, factor=s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, keep_ratio={self.keep_ratio})"


class LetterboxResize(Resize):
    """Keep-ratio resize by ``s = min(H/h, W/w)`` then pad right/bottom to exactly ``size`` (h, w).

    The model-side inverse is ``boxes / s`` (``detmodels`` letterbox rule). With ``keep_ratio=False``
    the image is stretched to ``size`` and nothing is padded.
    """

    def __init__(self, size: int | Sequence[int], keep_ratio: bool = True, pad_value: float = 114):
        super().__init__(size, keep_ratio)
        self.pad_value = pad_value

    def __call__(self, sample: Sample) -> Sample:
        return pad_sample(super().__call__(sample), *self.size, value=self.pad_value)


class RandomFlip:
    """Flip image, boxes and masks with probability ``prob`` (``direction``: horizontal | vertical).

    Draws from its own generator ``rng``: ``seed`` (``None`` means 0, so runs repeat by default);
    ``reseed(seed)`` replaces it — ``detflow.data.loader`` calls it in every DataLoader worker.
    """

    def __init__(self, prob: float = 0.5, direction: str = "horizontal", *, seed: int | None = None):
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"RandomFlip direction: expected 'horizontal' or 'vertical', got {direction!r}")
        if not 0 <= prob <= 1:
            raise ValueError(f"RandomFlip prob: expected a number in [0, 1], got {prob}")
        self.prob = prob
        self.direction = direction
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(0 if seed is None else seed)

    def __call__(self, sample: Sample) -> Sample:
        if self.prob <= 0 or self.rng.random() >= self.prob:
            return sample
        return flip_sample(sample, self.direction)

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, direction={self.direction!r})"


def flip_sample(sample: Sample, direction: str = "horizontal") -> Sample:
    """Deterministic flip of image, boxes (xyxy) and masks."""
    out = dict(sample)
    h, w = sample["image"].shape[:2]
    boxes = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4).copy()
    masks = sample.get("masks")
    if direction == "horizontal":
        out["image"] = flip_columns(sample["image"])
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        if masks is not None:
            out["masks"] = np.ascontiguousarray(masks[:, :, ::-1])
    else:
        out["image"] = np.ascontiguousarray(sample["image"][::-1])
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        if masks is not None:
            out["masks"] = np.ascontiguousarray(masks[:, ::-1])
    out["boxes"] = boxes
    return out


class Pad:
    """Pad right/bottom to ``size`` (int or (h, w)), or up to a multiple of ``size_divisor``.

    ``pad_value`` is an alias of ``value`` (the name ``LetterboxResize`` uses).
    """

    def __init__(self, size: int | Sequence[int] | None = None, value: float = 114, *,
                 size_divisor: int | None = None, pad_value: float | None = None):
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad: give exactly one of size and size_divisor")
        self.size = None if size is None else _hw(size)
        self.size_divisor = size_divisor
        self.value = value if pad_value is None else pad_value

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[:2]
        if self.size is not None:
            return pad_sample(sample, *self.size, value=self.value)
        d = self.size_divisor
        return pad_sample(sample, -(-h // d) * d, -(-w // d) * d, value=self.value)

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, size_divisor={self.size_divisor}, value={self.value})"


def _spec_stats(input_spec: Any) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
    """``(mean 3×1×1, std 3×1×1, pad value normalised per channel)`` of an ``InputSpec``."""
    mean = torch.tensor(input_spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(input_spec.std, dtype=torch.float32).view(3, 1, 1)
    pad = torch.full((3, 1, 1), float(getattr(input_spec, "pad_value", 114.0)))
    return mean, std, tuple(pad.sub_(mean).div_(std).flatten().tolist())  # float32, as the pixels


class PackDetInputs:
    """Last step: sample -> ``(image, target, meta)`` torch tensors for the model.

    * ``image``: ``3×H×W`` in ``input_spec.channel_order`` (``"BGR"`` reverses the RGB channels):
      float32 ``(x[c] - mean[c]) / std[c]``, or with ``normalize=False`` the uint8 pixels, to be
      normalised batch-wise by :func:`normalize_images` (bit-identical to normalising here).
    * ``target``: ``{"boxes": M×4 float32 xyxy input px, "labels": M int64[, "masks": M×H×W uint8]}``.
    * ``meta``: ``image_id``, ``orig_size`` (h, w), ``scale`` (input px per original px),
      ``input_size`` (H, W), ``scale_xy`` (sx, sy), ``pad_value`` (per channel, in the image's
      units — normalised, or the raw pixel value when uint8 — for collate).
    """

    def __init__(self, input_spec: Any, *, normalize: bool = True):
        order = getattr(input_spec, "channel_order", "RGB")
        if order not in ("RGB", "BGR"):
            raise ValueError(f"InputSpec.channel_order: expected 'RGB' or 'BGR', got {order!r}")
        self.input_spec = input_spec
        self.normalize = normalize
        self.bgr = order == "BGR"
        self.mean, self.std, normalized_pad = _spec_stats(input_spec)
        raw_pad = float(getattr(input_spec, "pad_value", 114.0))
        self.pad_value = normalized_pad if normalize else (raw_pad,) * 3

    def __call__(self, sample: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        # HWC uint8 -> CHW uint8 planes (one OpenCV split); then, when normalising, float and
        # normalise in place: the float32 arithmetic of (x - mean) / std with one float buffer
        image = torch.from_numpy(to_planes(sample["image"], reverse=self.bgr))
        if self.normalize:
            image = image.float().sub_(self.mean).div_(self.std)
        target = {
            "boxes": torch.as_tensor(np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(sample["labels"], dtype=np.int64).reshape(-1)),
        }
        if sample.get("masks") is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(sample["masks"], dtype=np.uint8))
        scale = float(sample.get("scale", 1.0))
        meta = {
            "image_id": int(sample["image_id"]), "orig_size": tuple(sample["orig_size"]), "scale": scale,
            "input_size": tuple(image.shape[1:]), "scale_xy": tuple(sample.get("scale_xy", (scale, scale))),
            "pad_value": self.pad_value,
        }
        return image, target, meta

    def __repr__(self) -> str:
        return f"PackDetInputs({self.input_spec!r}, normalize={self.normalize})"


def normalize_images(images: torch.Tensor, input_spec: Any) -> torch.Tensor:
    """uint8 images (``N×3×H×W`` or ``3×H×W``, channels already in ``input_spec.channel_order``)
    -> float32 ``(x - mean) / std`` on their own device; float images are returned as they are
    (already normalised by :class:`PackDetInputs`). Bit-identical to ``PackDetInputs(normalize=True)``."""
    if images.dtype != torch.uint8:
        return images
    mean, std = _device_stats(tuple(input_spec.mean), tuple(input_spec.std), images.device)
    return images.float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=16)
def _device_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as 3×1×1 float32 tensors on ``device``, made once per triple: the training
    loop normalises every batch with them (no per-step host-to-device copies)."""
    m, s = (torch.tensor(v, dtype=torch.float32, device=device).view(3, 1, 1) for v in (mean, std))
    return m, s


def build_val_transforms(image_size: int | Sequence[int], input_spec: Any) -> Compose:
    """Evaluation pipeline: letterbox to ``image_size`` (pad with ``input_spec.pad_value``), then pack."""
    pad = getattr(input_spec, "pad_value", 114.0)
    return Compose([LetterboxResize(image_size, pad_value=pad), PackDetInputs(input_spec)])


def build_basic_train_transforms(image_size: int | Sequence[int], input_spec: Any,
                                 flip_prob: float = 0.5) -> Compose:
    """A minimal training pipeline without mixing augmentations: letterbox, flip, filter, pack."""
    from .geometric import FilterAnnotations

    pad = getattr(input_spec, "pad_value", 114.0)
    return Compose([LetterboxResize(image_size, pad_value=pad), RandomFlip(flip_prob),
                    FilterAnnotations((1.0, 1.0)), PackDetInputs(input_spec)])
