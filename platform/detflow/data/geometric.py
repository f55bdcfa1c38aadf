"""Geometric and photometric augmentations that keep boxes and masks consistent.

RTMDet (arXiv 2212.07784, §3.3 "training strategy"; MMDetection configs) uses large-scale
jitter (``RandomResize`` with a ratio range), ``RandomCrop`` and ``YOLOXHSVRandomAug``; YOLOv6
(arXiv 2301.05586, §2.4 / training recipe) uses ``RandomAffine`` (translate + scale) and a gain
HSV jitter (``HSVRandomAug``). ``FilterAnnotations`` drops degenerate instances.

Every transform is a callable ``sample -> sample`` on the dict of the sample contract
(``image`` H×W×3 uint8 RGB, ``boxes`` M×4 float32 xyxy pixels, ``labels`` M int64, ``masks``
M×H×W uint8 or ``None``, ``image_id``, ``orig_size``, ``scale``). Transforms never modify the
arrays of their input in place. Random transforms draw from their own ``numpy.random.Generator``
(``seed=``; ``reseed(seed)`` is what a DataLoader worker calls) — never the global ``np.random``.

The helpers at the top (``resize_sample`` — note the ``(new_w, new_h)`` order —, ``fit_resize``,
``crop_sample``, ``masks_to_boxes``, ...) are shared with :mod:`detflow.data.mixing`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .imageops import apply_hsv_luts, resize_bilinear, resized_window, warp_affine

__all__ = [
    "RandomTransform", "RandomResize", "RandomCrop", "RandomResizeCrop", "RandomAffine", "YOLOXHSVRandomAug",
    "HSVRandomAug", "MultiScaleResize", "FilterAnnotations", "resize_sample", "resize_masks", "fit_resize",
    "fit_size", "crop_sample", "resized_crop_sample", "clip_boxes", "masks_to_boxes", "select_instances", "pair",
    "seed_transforms", "warp_sample", "box_candidates",
]

Sample = dict[str, Any]


# --------------------------------------------------------------------------- shared helpers
def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``640`` or ``(w, h)`` -> ``(w, h)``."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


def clip_boxes(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Clip M×4 float32 xyxy ``boxes`` in place to ``[x0, x1]×[y0, y1]`` and return them (two
    ufunc calls: ``ndarray.clip`` on column slices costs more in Python overhead than in work)."""
    np.maximum(boxes, np.float32([x0, y0, x0, y0]), out=boxes)
    return np.minimum(boxes, np.float32([x1, y1, x1, y1]), out=boxes)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes (M×4 float32, pixel edges: a mask covering columns 3..5 gives x1=3, x2=6)
    of M×H×W binary masks; an empty mask gives a zero box."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        cols = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        if cols.size and rows.size:
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def select_instances(sample: Sample, keep: np.ndarray) -> Sample:
    """A shallow copy of ``sample`` keeping only the instances where ``keep`` (bool M or indices)."""
    out = dict(sample)
    out["boxes"] = np.asarray(sample["boxes"], np.float32)[keep].reshape(-1, 4)
    out["labels"] = np.asarray(sample["labels"], np.int64)[keep]
    if sample.get("masks") is not None:
        out["masks"] = sample["masks"][keep]
    return out


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel for a nearest-neighbour resize src -> dst."""
    idx = np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def resize_masks(masks: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Nearest-neighbour resize of M×H×W masks to M×new_h×new_w."""
    _, h, w = masks.shape
    if (h, w) == (new_h, new_w):
        return masks
    return masks[:, _nearest_index(h, new_h)][:, :, _nearest_index(w, new_w)]


def resize_image(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Bilinear resize of an H×W×3 uint8 image (:func:`detflow.data.imageops.resize_bilinear`)."""
    return resize_bilinear(image, new_w, new_h)


def resize_sample(sample: Sample, new_w: int, new_h: int) -> Sample:
    """Resize image (bilinear), boxes (scaled) and masks (nearest) to ``new_w``×``new_h``.
    ``scale`` is multiplied by the horizontal factor."""
    h, w = sample["image"].shape[:2]
    sx, sy = new_w / w, new_h / h
    out = dict(sample)
    out["image"] = resize_image(sample["image"], new_w, new_h)
    out["boxes"] = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
    if sample.get("masks") is not None:
        out["masks"] = resize_masks(sample["masks"], new_w, new_h)
    out["scale"] = float(sample.get("scale", 1.0)) * sx
    return out


def fit_size(iw: int, ih: int, w: int, h: int) -> tuple[int, int]:
    """``(new_w, new_h)`` of an ``ih×iw`` image resized keep-ratio by ``min(w / iw, h / ih)``."""
    f = min(w / iw, h / ih)
    return max(1, int(round(iw * f))), max(1, int(round(ih * f)))


def fit_resize(sample: Sample, w: int, h: int) -> Sample:
    """Keep-ratio resize by ``min(w / iw, h / ih)`` so the sample fits ``w``×``h`` (no padding)."""
    ih, iw = sample["image"].shape[:2]
    return resize_sample(sample, *fit_size(iw, ih, w, h))


def crop_sample(sample: Sample, x0: int, y0: int, x1: int, y1: int, *,
                recompute_bbox: bool = False) -> Sample:
    """Crop ``[y0:y1, x0:x1]`` (inside the image); boxes shifted and clipped; instances left with
    no area are dropped. ``recompute_bbox`` (and masks present): boxes = tight boxes of the
    cropped masks, and instances whose cropped mask is empty are dropped."""
    out = dict(sample)
    out["image"] = sample["image"][y0:y1, x0:x1]
    masks = sample.get("masks")
    if masks is not None:
        out["masks"] = masks[:, y0:y1, x0:x1]
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) - np.float32([x0, y0, x0, y0])
    return _finish_crop(out, boxes, x1 - x0, y1 - y0, recompute_bbox)


def _finish_crop(out: Sample, boxes: np.ndarray, cw: int, ch: int, recompute_bbox: bool) -> Sample:
    """Clip crop-relative ``boxes`` to ``cw``×``ch`` (or take them from the cropped masks) and drop
    instances with no area."""
    clip_boxes(boxes, 0, 0, cw, ch)
    if recompute_bbox and out.get("masks") is not None:
        boxes = masks_to_boxes(out["masks"])
    out["boxes"] = boxes
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return select_instances(out, keep)


def resized_crop_sample(sample: Sample, new_w: int, new_h: int, x0: int, y0: int, x1: int, y1: int, *,
                        recompute_bbox: bool = False, pixels: bool = True) -> Sample:
    """``crop_sample(resize_sample(sample, new_w, new_h), x0, y0, x1, y1)`` computing only the
    kept window (:func:`detflow.data.imageops.resized_window`; masks by the same nearest indices).
    ``pixels=False``: the instances only (``image`` is left as the input's), to try a window."""
    h, w = sample["image"].shape[:2]
    sx, sy = new_w / w, new_h / h
    out = dict(sample)
    if pixels:
        out["image"] = resized_window(sample["image"], sx, sy, x0, y0, x1 - x0, y1 - y0)
    masks = sample.get("masks")
    if masks is not None:
        rows = _nearest_index(h, new_h)[y0:y1]
        cols = _nearest_index(w, new_w)[x0:x1]
        out["masks"] = masks[:, rows][:, :, cols]
    out["scale"] = float(sample.get("scale", 1.0)) * sx
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
    boxes -= np.float32([x0, y0, x0, y0])
    return _finish_crop(out, boxes, x1 - x0, y1 - y0, recompute_bbox)


def box_candidates(before: np.ndarray, after: np.ndarray, *, wh_thr: float = 2.0,
                   area_thr: float = 0.1, ar_thr: float = 20.0) -> np.ndarray:
    """YOLOv5/v6 ``box_candidates``: keep boxes wider/taller than ``wh_thr`` px, keeping at least
    ``area_thr`` of their (scaled) area, with aspect ratio below ``ar_thr``. Boxes are M×4."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


class RandomTransform:
    """Base of the random transforms: owns a seedable ``numpy.random.Generator`` (``self.rng``).

    Worker seeding: when the transform is first used in a process other than the one that made
    the generator (a forked DataLoader worker), the generator is re-derived from
    ``(seed, torch.initial_seed())`` — the DataLoader gives each worker its own torch seed from the
    loader's seeded generator — so workers draw different, reproducible streams.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Replace the generator (fixed ``seed``, or fresh entropy for ``None``)."""
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._pid = os.getpid()

    @property
    def rng(self) -> np.random.Generator:
        if os.getpid() != self._pid:
            import torch

            self._pid = os.getpid()
            self._rng = np.random.default_rng([self._seed or 0, torch.initial_seed() % 2**63])
        return self._rng

    @rng.setter
    def rng(self, value: np.random.Generator) -> None:
        self._rng, self._pid = value, os.getpid()


def seed_transforms(transforms: Any, seed: int) -> None:
    """Reseed every transform in ``transforms`` (a ``Compose`` with ``.transforms``, a list, or one
    transform) that has ``reseed``; transform ``i`` gets ``seed + i`` so no two share a stream."""
    items = getattr(transforms, "transforms", transforms)
    if not isinstance(items, (list, tuple)):
        items = [items]
    for i, t in enumerate(items):
        if callable(getattr(t, "reseed", None)):
            t.reseed(seed + i)


# --------------------------------------------------------------------------- transforms
class RandomResize(RandomTransform):
    """Large-scale jitter (RTMDet §3.3): resize to ``scale × r``, r ~ U(ratio_range).

    ``scale``: ``(w, h)`` (or an int). ``keep_ratio``: the image is resized by
    ``min(tw / w, th / h)`` so it fits ``(tw, th)`` = ``scale × r``; else exactly to ``(tw, th)``.
    """

    def __init__(self, scale: int | Sequence[int], ratio_range: Sequence[float] = (0.5, 2.0),
                 keep_ratio: bool = True, *, seed: int | None = None) -> None:
        super().__init__(seed)
        self.scale = pair(scale)
        lo, hi = ratio_range
        if not 0 < lo <= hi:
            raise ValueError(f"RandomResize: ratio_range must satisfy 0 < lo <= hi, got {ratio_range}")
        self.ratio_range = (float(lo), float(hi))
        self.keep_ratio = keep_ratio

    def draw_size(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        """Draw r and return the new ``(w, h)`` of an ``h×w`` image."""
        r = rng.uniform(*self.ratio_range)
        tw, th = self.scale[0] * r, self.scale[1] * r
        if self.keep_ratio:
            f = min(tw / w, th / h)
            return max(1, int(round(w * f))), max(1, int(round(h * f)))
        return max(1, int(round(tw))), max(1, int(round(th)))

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[:2]
        return resize_sample(sample, *self.draw_size(h, w, self.rng))

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"


class RandomCrop(RandomTransform):
    """Random ``size = (w, h)`` crop (smaller images are cropped to their own size; pad after).

    ``recompute_bbox``: with masks, boxes become the tight boxes of the cropped masks (RTMDet-Ins).
    ``allow_negative_crop=False``: a crop that would lose every box of a sample that had some is
    retried (up to ``max_tries`` offsets); the last try is kept if all fail.
    """

    def __init__(self, size: int | Sequence[int], *, recompute_bbox: bool = False,
                 allow_negative_crop: bool = False, max_tries: int = 10, seed: int | None = None) -> None:
        super().__init__(seed)
        self.size = pair(size)
        self.recompute_bbox = recompute_bbox
        self.allow_negative_crop = allow_negative_crop
        self.max_tries = max_tries

    def search(self, w: int, h: int, had_boxes: bool, crop: Callable[[int, int, int, int], Sample],
               rng: np.random.Generator) -> tuple[Sample, tuple[int, int, int, int]]:
        """Draw offsets for a ``w×h`` image: ``(crop(x0, y0, x1, y1), (x0, y0, x1, y1))`` of the
        kept try (only ``crop``'s boxes decide a retry)."""
        cw, ch = min(self.size[0], w), min(self.size[1], h)
        out: Sample = {}
        window = (0, 0, cw, ch)
        for _ in range(1 if self.allow_negative_crop else self.max_tries):
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            window = (x0, y0, x0 + cw, y0 + ch)
            out = crop(*window)
            if len(out["boxes"]) or not had_boxes:
                break
        return out, window

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[:2]
        return self.search(w, h, len(sample["boxes"]) > 0, lambda x0, y0, x1, y1: crop_sample(
            sample, x0, y0, x1, y1, recompute_bbox=self.recompute_bbox), self.rng)[0]

    def __repr__(self) -> str:
        return (f"RandomCrop(size={self.size}, recompute_bbox={self.recompute_bbox}, "
                f"allow_negative_crop={self.allow_negative_crop})")


class RandomResizeCrop(RandomTransform):
    """``RandomResize`` then ``RandomCrop`` fused: same random draws and the same result (up to
    bilinear rounding at the window border), but only the kept ``size`` window is resampled —
    LSJ at ratio 2 on a 2S mosaic canvas otherwise resamples a 4S×4S image to keep S×S. The
    retries try windows on the boxes alone; only the kept window's pixels are computed. The image
    may be an undrawn mosaic (``Mosaic(lazy=True)``'s TiledCanvas): its window is rendered from the
    tiles."""

    def __init__(self, scale: int | Sequence[int], ratio_range: Sequence[float], size: int | Sequence[int], *,
                 keep_ratio: bool = True, recompute_bbox: bool = False, allow_negative_crop: bool = False,
                 max_tries: int = 10, seed: int | None = None) -> None:
        super().__init__(seed)
        self.resize = RandomResize(scale, ratio_range, keep_ratio)
        self.crop = RandomCrop(size, recompute_bbox=recompute_bbox, allow_negative_crop=allow_negative_crop,
                               max_tries=max_tries)

    def plan(self, sample: Sample) -> tuple[Sample, tuple[int, int], tuple[int, int, int, int]]:
        """The random draws without the pixels: ``(output but its image, (new_w, new_h), window)``,
        ``window = (x0, y0, x1, y1)`` in the resized image."""
        h, w = sample["image"].shape[:2]
        new_w, new_h = self.resize.draw_size(h, w, self.rng)
        out, window = self.crop.search(
            new_w, new_h, len(sample["boxes"]) > 0, lambda x0, y0, x1, y1: resized_crop_sample(
                sample, new_w, new_h, x0, y0, x1, y1, recompute_bbox=self.crop.recompute_bbox, pixels=False),
            self.rng)
        return out, (new_w, new_h), window

    def __call__(self, sample: Sample) -> Sample:
        out, (new_w, new_h), (x0, y0, x1, y1) = self.plan(sample)
        h, w = sample["image"].shape[:2]
        out["image"] = resized_window(sample["image"], new_w / w, new_h / h, x0, y0, x1 - x0, y1 - y0)
        return out

    def __repr__(self) -> str:
        return f"RandomResizeCrop({self.resize!r} + {self.crop!r})"


class RandomAffine(RandomTransform):
    """YOLOv6 random affine (translate + scale; rotation/shear 0 by default), output ``output_size``.

    The image centre goes to the origin, is scaled by s ~ U(1 − scale, 1 + scale) (and rotated /
    sheared when asked), then translated to ``U(0.5 − translate, 0.5 + translate) × output``.
    With ``output_size = canvas / 2`` after a 2×2 mosaic this is YOLOv6's ``border = −S/2``.
    Boxes: transformed corners, clipped, filtered with :func:`box_candidates`; with masks and a
    rotation or shear, boxes are recomputed from the warped masks.
    """

    def __init__(self, output_size: int | Sequence[int] | None = None, *, translate: float = 0.1,
                 scale: float = 0.5, degrees: float = 0.0, shear: float = 0.0,
                 border_value: int = 114, seed: int | None = None) -> None:
        super().__init__(seed)
        self.output_size = None if output_size is None else pair(output_size)
        self.translate, self.scale, self.degrees, self.shear = translate, scale, degrees, shear
        self.border_value = border_value

    def _matrix(self, w: int, h: int, out_w: int, out_h: int) -> np.ndarray:
        """3×3 forward matrix (source pixel -> output pixel)."""
        c = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], np.float64)
        a = np.deg2rad(self.rng.uniform(-self.degrees, self.degrees))
        s = self.rng.uniform(1 - self.scale, 1 + self.scale)
        r = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0], [0, 0, 1]])
        sh = np.eye(3)
        sh[0, 1] = np.tan(np.deg2rad(self.rng.uniform(-self.shear, self.shear)))
        sh[1, 0] = np.tan(np.deg2rad(self.rng.uniform(-self.shear, self.shear)))
        t = np.eye(3)
        t[0, 2] = self.rng.uniform(0.5 - self.translate, 0.5 + self.translate) * out_w
        t[1, 2] = self.rng.uniform(0.5 - self.translate, 0.5 + self.translate) * out_h
        return t @ sh @ r @ c

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[:2]
        out_w, out_h = self.output_size or (w, h)
        m = self._matrix(w, h, out_w, out_h)
        return warp_sample(sample, m, out_w, out_h, border_value=self.border_value,
                           recompute_bbox=bool(self.degrees or self.shear))

    def __repr__(self) -> str:
        return (f"RandomAffine(output_size={self.output_size}, translate={self.translate}, "
                f"scale={self.scale}, degrees={self.degrees}, shear={self.shear})")


def warp_sample(sample: Sample, m: np.ndarray, out_w: int, out_h: int, *, border_value: int = 114,
                recompute_bbox: bool = False) -> Sample:
    """Apply the 3×3 affine ``m`` (source -> output pixel coordinates) to image, boxes and masks."""
    inv = np.linalg.inv(m)
    out = dict(sample)
    out["image"] = warp_affine(sample["image"], m, out_w, out_h, border_value)
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)
    xy = corners @ m[:2, :2].T + m[:2, 2]
    xy = xy.reshape(-1, 4, 2)
    new = np.concatenate([xy.min(1), xy.max(1)], axis=1).astype(np.float32)
    clip_boxes(new, 0, 0, out_w, out_h)
    masks = sample.get("masks")
    if masks is not None:
        out["masks"] = _warp_masks(masks, inv, out_w, out_h)
        if recompute_bbox:
            new = masks_to_boxes(out["masks"])
    out["boxes"] = new
    s = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    keep = box_candidates(boxes * s, new)
    out["scale"] = float(sample.get("scale", 1.0)) * s
    return select_instances(out, keep)


def _warp_masks(masks: np.ndarray, inv: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Nearest-neighbour inverse mapping of M×H×W masks through the affine ``inv`` (output -> source)."""
    _, h, w = masks.shape
    ys, xs = np.mgrid[0:out_h, 0:out_w]
    sx = inv[0, 0] * (xs + 0.5) + inv[0, 1] * (ys + 0.5) + inv[0, 2]
    sy = inv[1, 0] * (xs + 0.5) + inv[1, 1] * (ys + 0.5) + inv[1, 2]
    ix, iy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.zeros((len(masks), out_h, out_w), np.uint8)
    if len(masks):
        out[:, valid] = masks[:, iy[valid], ix[valid]]
    return out


class YOLOXHSVRandomAug(RandomTransform):
    """Additive HSV jitter (YOLOX; RTMDet stage 1 and 2): each of hue / saturation / value is
    shifted with probability 0.5 by U(−delta, delta). Hue deltas are in OpenCV units (0–180),
    saturation/value in 0–255, as in the RTMDet config (5, 30, 30); hue wraps at 180. Applied in
    uint8 through OpenCV's HSV and one lookup table per channel (:func:`~detflow.data.imageops.apply_hsv_luts`)."""

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30, value_delta: int = 30, *,
                 seed: int | None = None) -> None:
        super().__init__(seed)
        self.deltas = np.array([hue_delta, saturation_delta, value_delta], np.float64)

    def __call__(self, sample: Sample) -> Sample:
        gains = self.rng.uniform(-1, 1, 3) * self.rng.integers(0, 2, 3) * self.deltas
        gains = np.round(gains)
        if not gains.any():
            return sample
        x = np.arange(256, dtype=np.int64)
        lut_h = ((x + int(gains[0])) % 180).astype(np.uint8) if gains[0] else None  # None: unchanged
        lut_s = np.clip(x + gains[1], 0, 255).astype(np.uint8) if gains[1] else None
        lut_v = np.clip(x + gains[2], 0, 255).astype(np.uint8) if gains[2] else None
        return {**sample, "image": apply_hsv_luts(sample["image"], lut_h, lut_s, lut_v)}

    def __repr__(self) -> str:
        return f"YOLOXHSVRandomAug(deltas={tuple(int(d) for d in self.deltas)})"


class HSVRandomAug(RandomTransform):
    """Multiplicative HSV gains (YOLOv5/v6 ``augment_hsv``): channel × U(1 − g, 1 + g), hue wraps.
    YOLOv6 defaults h 0.015, s 0.7, v 0.4 (hue in OpenCV's 0–179 units, as YOLOv5/v6)."""

    def __init__(self, hgain: float = 0.015, sgain: float = 0.7, vgain: float = 0.4, *,
                 seed: int | None = None) -> None:
        super().__init__(seed)
        self.gains = np.array([hgain, sgain, vgain], np.float64)

    def __call__(self, sample: Sample) -> Sample:
        r = self.rng.uniform(-1, 1, 3) * self.gains + 1
        x = np.arange(256, dtype=np.float64)
        lut_h = (np.round(x * r[0]) % 180).astype(np.uint8)
        lut_s = np.clip(np.round(x * r[1]), 0, 255).astype(np.uint8)
        lut_v = np.clip(np.round(x * r[2]), 0, 255).astype(np.uint8)
        return {**sample, "image": apply_hsv_luts(sample["image"], lut_h, lut_s, lut_v)}

    def __repr__(self) -> str:
        return f"HSVRandomAug(gains={tuple(float(g) for g in self.gains)})"


class MultiScaleResize(RandomTransform):
    """Multi-scale training (YOLOv3 / ASFF §5.3): keep-ratio resize so the image fits ``size``×``size``,
    ``size`` drawn from ``sizes`` anew every ``interval`` calls (set it to 10 × the per-worker batch
    so that a batch shares one size; the collate pads the batch)."""

    def __init__(self, sizes: Sequence[int], *, interval: int = 10, seed: int | None = None) -> None:
        super().__init__(seed)
        if not sizes or interval < 1:
            raise ValueError(f"MultiScaleResize: need sizes and interval >= 1, got {sizes}, {interval}")
        self.sizes, self.interval = [int(v) for v in sizes], int(interval)
        self._calls, self.size = 0, self.sizes[-1]

    def __call__(self, sample: Sample) -> Sample:
        if self._calls % self.interval == 0:
            self.size = int(self.rng.choice(self.sizes))
        self._calls += 1
        return fit_resize(sample, self.size, self.size)

    def __repr__(self) -> str:
        return f"MultiScaleResize(sizes={self.sizes}, interval={self.interval})"


class FilterAnnotations:
    """Drop instances whose box is smaller than ``min_wh = (w, h)`` pixels, and (``by_mask``) whose
    mask is empty (RTMDet-Ins: ``FilterAnnotations(min_gt_bbox_wh=(1, 1))``)."""

    def __init__(self, min_wh: Sequence[float] = (1.0, 1.0), *, by_mask: bool = True) -> None:
        self.min_wh = (float(min_wh[0]), float(min_wh[1]))
        self.by_mask = by_mask

    def __call__(self, sample: Sample) -> Sample:
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_wh[0]) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_wh[1])
        if self.by_mask and sample.get("masks") is not None and len(boxes):
            keep &= sample["masks"].any(axis=(1, 2))
        if keep.all():
            return sample
        return select_instances(sample, keep)

    def __repr__(self) -> str:
        return f"FilterAnnotations(min_wh={self.min_wh}, by_mask={self.by_mask})"
