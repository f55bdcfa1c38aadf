"""Multi-image augmentations: Mosaic, MixUp, their cached forms (RTMDet), CutMix, Copy-Paste.

- ``Mosaic`` / ``MixUp``: YOLOv4 mosaic and MixUp (Zhang et al. 2018) as in YOLOX / MMDetection.
- ``CachedMosaic`` / ``CachedMixUp``: RTMDet (arXiv 2212.07784, §3.3): the partner images come from
  a cache of already-loaded samples instead of fresh decodes. Each call first pushes the incoming
  sample into the cache — popping one entry (a random one with ``random_pop``, else the oldest)
  when it already holds ``max_cached_images`` — and returns the sample unchanged until the cache
  holds more than 4 (mosaic) / 1 (mixup) entries.
- ``CutMix`` (Yun et al. 2019) and ``CopyPaste`` (Ghiasi et al. 2021, "Simple Copy-Paste").

Every transform keeps boxes, labels and masks (when present) consistent, draws from its own
seedable ``numpy.random.Generator``, and never modifies its input arrays in place. Uncached forms
take partner samples from ``attach(dataset)`` → ``dataset.load_sample(i)``. Cached forms expose
``state_dict()`` / ``load_state_dict()`` holding the cached ``image_id`` list (checkpointing):
restored entries are re-read raw from the attached dataset, not the augmented pixels.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .geometric import (
    RandomTransform, Sample, clip_boxes, crop_sample, fit_resize, fit_size, masks_to_boxes, pair, resize_sample,
    select_instances,
)
from .imageops import Tile, TiledCanvas, blend
from .transforms import flip_sample

__all__ = [
    "SampleCache", "Mosaic", "CachedMosaic", "MixUp", "CachedMixUp", "CutMix", "CopyPaste",
    "cutmix_pair", "copy_paste_pair", "letterbox_fit",
]


def _copy(sample: Sample, fresh: Sequence[str] = ()) -> Sample:
    """Copy of a sample dict whose arrays are private (safe to cache); the arrays under the keys
    ``fresh`` are already private (just made by the caller) and are not copied again."""
    return {k: (v.copy() if isinstance(v, np.ndarray) and k not in fresh else v) for k, v in sample.items()}


def _merge(samples: Sequence[Sample], base: Sample, image: np.ndarray | TiledCanvas) -> Sample:
    """``base`` with ``image`` and the concatenated instances of ``samples`` (masks only when every
    sample has masks, all already at ``image``'s size)."""
    out = dict(base)
    out["image"] = image
    out["boxes"] = np.concatenate([np.asarray(s["boxes"], np.float32).reshape(-1, 4) for s in samples])
    out["labels"] = np.concatenate([np.asarray(s["labels"], np.int64).reshape(-1) for s in samples])
    if all(s.get("masks") is not None for s in samples):
        out["masks"] = np.concatenate([s["masks"] for s in samples]).astype(np.uint8, copy=False)
    else:
        out["masks"] = None
    return out


def _nonempty(sample: Sample) -> Sample:
    """Drop instances with no area (after clipping)."""
    b = sample["boxes"]
    return select_instances(sample, (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))


def letterbox_fit(sample: Sample, w: int, h: int, *, pad_val: int = 114) -> Sample:
    """Keep-ratio resize so the sample fits ``w``×``h``, placed top-left on a ``pad_val`` canvas."""
    return _place(fit_resize(sample, w, h), w, h, 0, 0, pad_val)


def _place(sample: Sample, canvas_w: int, canvas_h: int, x: int, y: int, pad_val: int) -> Sample:
    """Paste ``sample`` with its top-left corner at (x, y) (may be negative) onto a ``pad_val``
    canvas; boxes shifted and clipped, masks placed on zero canvases, instances cut off dropped."""
    ih, iw = sample["image"].shape[:2]
    covered = x <= 0 and y <= 0 and x + iw >= canvas_w and y + ih >= canvas_h  # no padding shows
    canvas = np.empty((canvas_h, canvas_w, 3), np.uint8) if covered else np.full((canvas_h, canvas_w, 3), pad_val,
                                                                                 np.uint8)
    return _paste(sample, canvas, x, y)


def _visible(x: int, y: int, iw: int, ih: int, canvas_w: int, canvas_h: int) -> tuple[int, int, int, int]:
    """``(cx0, cy0, cx1, cy1)``: the part of an ``ih×iw`` image placed at (x, y) that lies on a
    ``canvas_h×canvas_w`` canvas (empty when cx1 <= cx0 or cy1 <= cy0)."""
    return max(x, 0), max(y, 0), min(x + iw, canvas_w), min(y + ih, canvas_h)


def _placed_boxes(sample: Sample, x: int, y: int, rect: tuple[int, int, int, int]) -> np.ndarray:
    """``sample``'s boxes moved by (x, y) and clipped to its visible ``rect`` on the canvas."""
    cx0, cy0, cx1, cy1 = rect
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) + np.float32([x, y, x, y])
    return clip_boxes(boxes, cx0, cy0, max(cx1, cx0), max(cy1, cy0))


def _paste(sample: Sample, image: np.ndarray, x: int, y: int) -> Sample:
    """Write ``sample``'s image into the canvas ``image`` (in place) with its top-left corner at
    (x, y) (may be negative), cut at the canvas border: ``_place`` on a canvas the caller owns, so
    a mosaic writes its tiles straight into one canvas. The returned sample has ``image`` = the
    canvas, boxes shifted and clipped to the visible part, masks on zero canvases, cut-off
    instances dropped."""
    canvas_h, canvas_w = image.shape[:2]
    ih, iw = sample["image"].shape[:2]
    rect = cx0, cy0, cx1, cy1 = _visible(x, y, iw, ih, canvas_w, canvas_h)
    out = dict(sample)
    out["boxes"] = _placed_boxes(sample, x, y, rect)
    masks = sample.get("masks")
    if masks is not None:
        out["masks"] = np.zeros((len(masks), canvas_h, canvas_w), np.uint8)
    if cx1 > cx0 and cy1 > cy0:
        src = np.s_[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
        image[cy0:cy1, cx0:cx1] = sample["image"][src]
        if masks is not None:
            out["masks"][:, cy0:cy1, cx0:cx1] = masks[(slice(None),) + src]
    out["image"] = image
    return _nonempty(out)


def _tile(sample: Sample, x: int, y: int, canvas_w: int, canvas_h: int) -> tuple[Sample, Tile | None]:
    """:func:`_paste` without drawing: the instances as ``_paste`` gives them (no masks), except
    that those cut off are still there (the caller drops them from the merged mosaic at once),
    and the visible part of the image as a :class:`TiledCanvas` tile (``None`` when nothing shows)."""
    ih, iw = sample["image"].shape[:2]
    rect = cx0, cy0, cx1, cy1 = _visible(x, y, iw, ih, canvas_w, canvas_h)
    out = dict(sample)
    out["boxes"] = _placed_boxes(sample, x, y, rect)
    visible = cx1 > cx0 and cy1 > cy0
    tile = (sample["image"][cy0 - y:cy1 - y, cx0 - x:cx1 - x], cx0, cy0) if visible else None
    return out, tile


def _fitted(sample: Sample, w: int, h: int) -> Sample:
    """:func:`fit_resize` to ``w``×``h``; a sample that already has the fitted size (a cached
    mosaic tile) as it is — the resize would only copy the dict and scale its boxes by 1."""
    ih, iw = sample["image"].shape[:2]
    return sample if fit_size(iw, ih, w, h) == (iw, ih) else fit_resize(sample, w, h)


class SampleCache:
    """The RTMDet sample cache: ``push`` pops one entry first when full (random or FIFO)."""

    def __init__(self, max_size: int, random_pop: bool) -> None:
        if max_size < 1:
            raise ValueError(f"max_cached_images must be >= 1, got {max_size}")
        self.max_size, self.random_pop = int(max_size), bool(random_pop)
        self.entries: list[Sample] = []

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, sample: Sample, rng: np.random.Generator, *, fresh: Sequence[str] = ()) -> None:
        """Add a private copy of ``sample`` (the arrays under the keys ``fresh`` are taken as they
        are: the caller just made them)."""
        if len(self.entries) >= self.max_size:
            index = int(rng.integers(len(self.entries))) if self.random_pop else 0
            self.entries.pop(index)
        self.entries.append(_copy(sample, fresh))

    def image_ids(self) -> list[int]:
        return [int(s.get("image_id", -1)) for s in self.entries]


class _MixingTransform(RandomTransform):
    """Shared plumbing: probability, dataset attachment, partner sampling."""

    def __init__(self, prob: float = 1.0, *, seed: int | None = None) -> None:
        super().__init__(seed)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{type(self).__name__}: prob must be in [0, 1], got {prob}")
        self.prob = float(prob)
        self.dataset: Any = None

    def attach(self, dataset: Any) -> None:
        """Give the transform a dataset with ``load_sample(i)`` and ``__len__`` for partners."""
        self.dataset = dataset

    def _load_random(self) -> Sample:
        if self.dataset is None:
            raise RuntimeError(f"{type(self).__name__} needs partner images: call attach(dataset) first")
        return self.dataset.load_sample(int(self.rng.integers(len(self.dataset))))


class _CacheState:
    """Mixin for the cached transforms: checkpointable cache state (image ids + generator)."""

    cache: SampleCache
    rng: np.random.Generator
    dataset: Any

    def state_dict(self) -> dict[str, Any]:
        """``{"image_ids": [...], "rng": bit-generator state}`` (JSON/pickle friendly)."""
        return {"image_ids": self.cache.image_ids(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refill the cache by re-reading the listed image ids from the attached dataset."""
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        ids = list(state.get("image_ids", []))
        self.cache.entries = []
        if not ids:
            return
        if self.dataset is None:
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: attach(dataset) first")
        index = _index_by_image_id(self.dataset)
        for image_id in ids[-self.cache.max_size:]:
            if image_id in index:
                self.cache.entries.append(_copy(self.dataset.load_sample(index[image_id])))


def _index_by_image_id(dataset: Any) -> dict[int, int]:
    """image_id -> dataset index, from ``dataset.image_ids`` / ``ids`` when present, else by reading
    the samples (slow; only when restoring a checkpoint)."""
    for attr in ("image_ids", "ids", "img_ids"):
        ids = getattr(dataset, attr, None)
        if ids is not None and not callable(ids):
            return {int(i): k for k, i in enumerate(ids)}
    return {int(dataset.load_sample(k)["image_id"]): k for k in range(len(dataset))}


# --------------------------------------------------------------------------- Mosaic
class Mosaic(_MixingTransform):
    """YOLOv4/YOLOX 2×2 mosaic on a ``2h × 2w`` canvas, ``img_scale = (w, h)`` per tile.

    The centre is (U(center_ratio_range)·w, U(center_ratio_range)·h); each of the 4 images is
    resized keep-ratio to fit a tile and placed top-left / top-right / bottom-left / bottom-right of
    the centre, cut at the canvas border. Output: image 2h×2w×3, boxes clipped, masks 2h×2w.
    A sample that is not mosaicked is returned unchanged, or through ``fallback`` when given
    (YOLOv6 letterboxes it to the tile size).

    ``lazy`` (for a ``RandomResizeCrop`` that comes next, RTMDet's LSJ): the output ``image`` is a
    :class:`~detflow.data.imageops.TiledCanvas` — the placed tiles, undrawn — and the crop renders
    only its window from the tiles. Boxes and labels are the same; mosaics with masks are drawn.
    """

    def __init__(self, img_scale: int | Sequence[int] = 640, *, center_ratio_range: Sequence[float] = (0.5, 1.5),
                 pad_val: int = 114, prob: float = 1.0, fallback: Callable[[Sample], Sample] | None = None,
                 lazy: bool = False, seed: int | None = None) -> None:
        super().__init__(prob, seed=seed)
        self.fallback = fallback
        self.img_scale = pair(img_scale)
        self.center_ratio_range = (float(center_ratio_range[0]), float(center_ratio_range[1]))
        self.pad_val = pad_val
        self.lazy = bool(lazy)

    def _tiles(self, sample: Sample) -> list[Sample] | None:
        """The 4 samples of the mosaic (``sample`` first), or ``None`` for no mosaic."""
        return [sample, *(self._load_random() for _ in range(3))]

    def __call__(self, sample: Sample) -> Sample:
        tiles = self._tiles(sample)
        if tiles is None or self.rng.random() > self.prob:
            return sample if self.fallback is None else self.fallback(sample)
        return self.combine(tiles)

    def combine(self, samples: Sequence[Sample]) -> Sample:
        """Mosaic of exactly 4 samples (the first gives image_id / orig_size).

        Each tile is resized keep-ratio to fit ``img_scale`` (a no-op for a tile already fitted,
        as the cached form keeps them) and placed against the centre, inside its own quadrant:
        written straight into the one ``2h×2w`` canvas, or (``lazy``, no masks) kept as a tile of
        a :class:`TiledCanvas`."""
        w, h = self.img_scale
        xc = int(self.rng.uniform(*self.center_ratio_range) * w)
        yc = int(self.rng.uniform(*self.center_ratio_range) * h)
        fitted = [_fitted(s, w, h) for s in samples]
        origins = []
        for corner, rs in enumerate(fitted):
            rh, rw = rs["image"].shape[:2]
            origins.append((xc - rw if corner in (0, 2) else xc, yc - rh if corner in (0, 1) else yc))
        if self.lazy and all(s.get("masks") is None for s in fitted):
            placed, tiles = zip(*(_tile(rs, x, y, 2 * w, 2 * h) for rs, (x, y) in zip(fitted, origins)))
            canvas = TiledCanvas(2 * w, 2 * h, [t for t in tiles if t], self.pad_val)
            out = _nonempty(_merge(placed, samples[0], canvas))
        else:
            image = np.full((2 * h, 2 * w, 3), self.pad_val, np.uint8)
            placed = [_paste(rs, image, x, y) for rs, (x, y) in zip(fitted, origins)]
            out = _merge(placed, samples[0], image)
        out["scale"] = placed[0].get("scale", 1.0)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(img_scale={self.img_scale}, prob={self.prob}{self._lazy_repr()})"

    def _lazy_repr(self) -> str:
        return ", lazy=True (drawn by the crop)" if self.lazy else ""


class CachedMosaic(_CacheState, Mosaic):
    """RTMDet's CachedMosaic: partners drawn (with replacement) from a cache of loaded samples.

    Unchanged output until the cache holds more than 4 entries. RTMDet: ``max_cached_images=40,
    random_pop=True`` (tiny: 20, FIFO). The cache keeps each sample already resized to fit a tile
    (the resize every mosaic would otherwise repeat): the same pixels and boxes, resized once.
    """

    def __init__(self, img_scale: int | Sequence[int] = 640, *, max_cached_images: int = 40,
                 random_pop: bool = True, center_ratio_range: Sequence[float] = (0.5, 1.5),
                 pad_val: int = 114, prob: float = 1.0, fallback: Callable[[Sample], Sample] | None = None,
                 lazy: bool = False, seed: int | None = None) -> None:
        super().__init__(img_scale, center_ratio_range=center_ratio_range, pad_val=pad_val, prob=prob,
                         fallback=fallback, lazy=lazy, seed=seed)
        self.cache = SampleCache(max_cached_images, random_pop)

    def _tiles(self, sample: Sample) -> list[Sample] | None:
        fitted = self._fit(sample)
        resized = fitted["image"] is not sample["image"]  # a resize made new image, boxes and masks
        self.cache.push(fitted, self.rng, fresh=("image", "boxes", "masks") if resized else ())
        if len(self.cache) <= 4:
            return None
        picks = self.rng.integers(len(self.cache), size=3)
        return [fitted, *(self.cache.entries[int(i)] for i in picks)]

    def _fit(self, sample: Sample) -> Sample:
        """``sample`` resized keep-ratio to fit one tile (what :meth:`combine` would do to it)."""
        return fit_resize(sample, *self.img_scale)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cache.entries = [self._fit(s) for s in self.cache.entries]

    def __repr__(self) -> str:
        return (f"CachedMosaic(img_scale={self.img_scale}, max_cached_images={self.cache.max_size}, "
                f"random_pop={self.cache.random_pop}, prob={self.prob}{self._lazy_repr()})")


# --------------------------------------------------------------------------- MixUp
class MixUp(_MixingTransform):
    """MixUp as in YOLOX / MMDetection: blend with a partner resized keep-ratio to ``img_scale``,
    jittered by U(ratio_range), flipped with ``flip_ratio``, and randomly cropped to this image's size.

    Blend weight λ = 0.5 (``alpha=None``, RTMDet/YOLOX) or λ ~ Beta(alpha, alpha) (YOLOv6 32,
    ASFF 1.5): ``image = λ·this + (1 − λ)·partner``. Partner boxes that keep less than
    ``min_area_ratio`` of their area, are under ``min_bbox_size`` px, or exceed ``max_aspect_ratio``
    are dropped; masks follow the boxes.
    """

    def __init__(self, img_scale: int | Sequence[int] = 640, *, ratio_range: Sequence[float] = (0.5, 1.5),
                 flip_ratio: float = 0.5, pad_val: int = 114, prob: float = 1.0, alpha: float | None = None,
                 min_bbox_size: float = 5.0, min_area_ratio: float = 0.2, max_aspect_ratio: float = 20.0,
                 seed: int | None = None) -> None:
        super().__init__(prob, seed=seed)
        self.img_scale = pair(img_scale)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.flip_ratio, self.pad_val, self.alpha = flip_ratio, pad_val, alpha
        self.min_bbox_size, self.min_area_ratio = min_bbox_size, min_area_ratio
        self.max_aspect_ratio = max_aspect_ratio

    def _partner(self, sample: Sample) -> Sample | None:
        return self._load_random()

    def __call__(self, sample: Sample) -> Sample:
        partner = self._partner(sample)
        if partner is None or self.rng.random() > self.prob or len(partner["boxes"]) == 0:
            return sample
        return self.blend(sample, partner)

    def blend(self, sample: Sample, partner: Sample) -> Sample:
        """Mix ``partner`` into ``sample`` (output has ``sample``'s size and ids)."""
        th, tw = sample["image"].shape[:2]
        jit = self.rng.uniform(*self.ratio_range)
        flip = self.rng.random() < self.flip_ratio
        w, h = self.img_scale
        ih, iw = partner["image"].shape[:2]
        f = min(w / iw, h / ih) * jit  # keep-ratio fit to img_scale, then the jitter, in one resize
        fitted = resize_sample(partner, max(1, int(round(iw * f))), max(1, int(round(ih * f))))
        jw, jh = max(1, int(round(w * jit))), max(1, int(round(h * jit)))
        x = 0
        if flip:  # mirror the whole jittered canvas: the image ends up on its right side
            fitted = flip_sample(fitted, "horizontal")
            x = max(jw - fitted["image"].shape[1], 0)
        big = _place(fitted, max(jw, tw), max(jh, th), x, 0, self.pad_val)
        x0 = int(self.rng.integers(0, big["image"].shape[1] - tw + 1))
        y0 = int(self.rng.integers(0, big["image"].shape[0] - th + 1))
        cropped = self._crop_partner(big, x0, y0, tw, th)
        lam = 0.5 if self.alpha is None else float(self.rng.beta(self.alpha, self.alpha))
        return _merge([sample, cropped], sample, blend(sample["image"], cropped["image"], lam))

    def _crop_partner(self, big: Sample, x0: int, y0: int, tw: int, th: int) -> Sample:
        """Crop the placed partner to ``tw``×``th`` at (x0, y0); drop boxes the crop cut down too
        much (MMDetection ``_filter_box_candidates``)."""
        before = np.asarray(big["boxes"], np.float32).reshape(-1, 4) - np.float32([x0, y0, x0, y0])
        c = clip_boxes(before.copy(), 0, 0, tw, th)
        cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
        ar = np.maximum(cw / (ch + 1e-16), ch / (cw + 1e-16))
        area = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1])
        keep = ((cw > self.min_bbox_size) & (ch > self.min_bbox_size)
                & (cw * ch / (area + 1e-16) > self.min_area_ratio) & (ar < self.max_aspect_ratio))
        out = dict(big)
        out["image"] = big["image"][y0:y0 + th, x0:x0 + tw]
        out["boxes"] = c
        if big.get("masks") is not None:
            out["masks"] = big["masks"][:, y0:y0 + th, x0:x0 + tw]
        return select_instances(out, keep)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(img_scale={self.img_scale}, ratio_range={self.ratio_range}, prob={self.prob})"


class CachedMixUp(_CacheState, MixUp):
    """RTMDet's CachedMixUp: the partner is a cache entry other than the sample just pushed.

    Unchanged output until the cache holds more than 1 entry. RTMDet: ``max_cached_images=20,
    random_pop=True, prob=1.0``, ratio_range (1, 1) (tiny: 10, FIFO, prob 0.5).
    """

    def __init__(self, img_scale: int | Sequence[int] = 640, *, max_cached_images: int = 20,
                 random_pop: bool = True, prob: float = 1.0, ratio_range: Sequence[float] = (1.0, 1.0),
                 flip_ratio: float = 0.5, pad_val: int = 114, alpha: float | None = None,
                 seed: int | None = None) -> None:
        super().__init__(img_scale, ratio_range=ratio_range, flip_ratio=flip_ratio, pad_val=pad_val,
                         prob=prob, alpha=alpha, seed=seed)
        self.cache = SampleCache(max_cached_images, random_pop)

    def _partner(self, sample: Sample) -> Sample | None:
        self.cache.push(sample, self.rng)
        if len(self.cache) <= 1:
            return None
        return self.cache.entries[int(self.rng.integers(len(self.cache) - 1))]

    def __repr__(self) -> str:
        return (f"CachedMixUp(img_scale={self.img_scale}, max_cached_images={self.cache.max_size}, "
                f"random_pop={self.cache.random_pop}, prob={self.prob})")


# --------------------------------------------------------------------------- CutMix
def cutmix_pair(sample: Sample, partner: Sample, region: Sequence[int], *, min_visible: float = 0.2) -> Sample:
    """Paste ``partner[y0:y1, x0:x1]`` into ``sample`` at the same place (CutMix, Yun et al. 2019).

    ``partner`` must already have ``sample``'s size; ``region = (x0, y0, x1, y1)``.
    This image's instances: with masks, the pasted region is erased from each mask and the box
    recomputed (empty -> dropped); without masks, boxes keeping less than ``min_visible`` of their
    area outside the region are dropped, others kept as they are. Partner instances: clipped to the
    region, kept when at least ``min_visible`` of their area lies inside.
    """
    x0, y0, x1, y1 = (int(v) for v in region)
    image = sample["image"].copy()
    image[y0:y1, x0:x1] = partner["image"][y0:y1, x0:x1]
    own = _occlude(sample, (x0, y0, x1, y1), min_visible)
    pb = np.asarray(partner["boxes"], np.float32).reshape(-1, 4)
    inside = _inter_area(pb, (x0, y0, x1, y1)) / np.maximum(_area(pb), 1e-9)
    keep_ids = np.flatnonzero(inside >= min_visible)
    pasted = select_instances(partner, keep_ids)
    pasted = _place(crop_sample(pasted, x0, y0, x1, y1), image.shape[1], image.shape[0], x0, y0, 0)
    if pasted.get("masks") is not None:
        pasted["boxes"] = masks_to_boxes(pasted["masks"])
    return _merge([own, pasted], sample, image)


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)


def _inter_area(b: np.ndarray, region: Sequence[int]) -> np.ndarray:
    x0, y0, x1, y1 = region
    iw = (np.minimum(b[:, 2], x1) - np.maximum(b[:, 0], x0)).clip(0)
    ih = (np.minimum(b[:, 3], y1) - np.maximum(b[:, 1], y0)).clip(0)
    return iw * ih


def _occlude(sample: Sample, region: Sequence[int], min_visible: float) -> Sample:
    """Instances of ``sample`` after ``region`` is covered by something else."""
    x0, y0, x1, y1 = region
    masks = sample.get("masks")
    if masks is not None:
        out = dict(sample)
        out["masks"] = masks.copy()
        out["masks"][:, y0:y1, x0:x1] = 0
        out["boxes"] = masks_to_boxes(out["masks"])
        return select_instances(out, out["masks"].any(axis=(1, 2)))
    b = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
    visible = 1.0 - _inter_area(b, region) / np.maximum(_area(b), 1e-9)
    return select_instances(sample, visible >= min_visible)


class CutMix(_MixingTransform):
    """CutMix for detection: a rectangle of a partner image (letterboxed to this size) replaces the
    same rectangle here. Area fraction 1 − λ with λ ~ Beta(alpha, alpha); see :func:`cutmix_pair`."""

    def __init__(self, prob: float = 0.5, *, alpha: float = 1.0, min_visible: float = 0.2,
                 pad_val: int = 114, seed: int | None = None) -> None:
        super().__init__(prob, seed=seed)
        self.alpha, self.min_visible, self.pad_val = alpha, min_visible, pad_val

    def __call__(self, sample: Sample) -> Sample:
        if self.rng.random() > self.prob:
            return sample
        h, w = sample["image"].shape[:2]
        partner = letterbox_fit(self._load_random(), w, h, pad_val=self.pad_val)
        cut = np.sqrt(1.0 - self.rng.beta(self.alpha, self.alpha))
        cw, ch = int(w * cut), int(h * cut)
        cx, cy = int(self.rng.integers(w)), int(self.rng.integers(h))
        region = (max(cx - cw // 2, 0), max(cy - ch // 2, 0), min(cx + cw // 2, w), min(cy + ch // 2, h))
        if region[2] <= region[0] or region[3] <= region[1]:
            return sample
        return cutmix_pair(sample, partner, region, min_visible=self.min_visible)

    def __repr__(self) -> str:
        return f"CutMix(prob={self.prob}, alpha={self.alpha})"


# --------------------------------------------------------------------------- Copy-Paste
def copy_paste_pair(sample: Sample, partner: Sample, selected: Sequence[int] | np.ndarray, *,
                    bbox_occluded_thr: float = 10.0, mask_occluded_thr: int = 300) -> Sample:
    """Paste the ``selected`` instances of ``partner`` (same size as ``sample``, masks required)
    onto ``sample`` (Simple Copy-Paste, Ghiasi et al. 2021).

    Pixels under the union of the pasted masks take the partner's pixels; this image's masks lose
    those pixels and their boxes are recomputed. An instance of this image is kept when its box
    moved by at most ``bbox_occluded_thr`` px on every side or more than ``mask_occluded_thr``
    mask pixels remain (the MMDetection rule). Pasted boxes are the tight boxes of their masks.
    """
    if sample.get("masks") is None or partner.get("masks") is None:
        return sample
    picked = select_instances(partner, np.asarray(selected, np.int64))
    if len(picked["labels"]) == 0:
        return sample
    union = picked["masks"].any(axis=0)
    image = np.where(union[..., None], partner["image"], sample["image"])
    own = dict(sample)
    own["masks"] = sample["masks"] * (~union)[None].astype(np.uint8)
    new_boxes = masks_to_boxes(own["masks"])
    moved = np.abs(new_boxes - np.asarray(sample["boxes"], np.float32).reshape(-1, 4)).max(axis=1) \
        if len(new_boxes) else np.zeros(0, np.float32)
    remain = own["masks"].sum(axis=(1, 2), dtype=np.int64)
    own["boxes"] = new_boxes
    own = select_instances(own, ((moved <= bbox_occluded_thr) | (remain > mask_occluded_thr)) & (remain > 0))
    picked["boxes"] = masks_to_boxes(picked["masks"])
    picked = select_instances(picked, picked["masks"].any(axis=(1, 2)))
    return _merge([own, picked], sample, image.astype(np.uint8))


class CopyPaste(_MixingTransform):
    """Simple Copy-Paste: a random subset (size U{0..min(n, max_num_pasted)}) of a partner's
    instances, partner letterboxed to this size, pasted with their masks. No-op without masks."""

    def __init__(self, prob: float = 0.5, *, max_num_pasted: int = 100, bbox_occluded_thr: float = 10.0,
                 mask_occluded_thr: int = 300, pad_val: int = 114, seed: int | None = None) -> None:
        super().__init__(prob, seed=seed)
        self.max_num_pasted = max_num_pasted
        self.bbox_occluded_thr, self.mask_occluded_thr = bbox_occluded_thr, mask_occluded_thr
        self.pad_val = pad_val

    def __call__(self, sample: Sample) -> Sample:
        if sample.get("masks") is None or self.rng.random() > self.prob:
            return sample
        h, w = sample["image"].shape[:2]
        partner = letterbox_fit(self._load_random(), w, h, pad_val=self.pad_val)
        n = len(partner["labels"])
        if partner.get("masks") is None or n == 0:
            return sample
        k = int(self.rng.integers(0, min(n, self.max_num_pasted) + 1))
        selected = self.rng.choice(n, size=k, replace=False)
        return copy_paste_pair(sample, partner, selected, bbox_occluded_thr=self.bbox_occluded_thr,
                               mask_occluded_thr=self.mask_occluded_thr)

    def __repr__(self) -> str:
        return f"CopyPaste(prob={self.prob}, max_num_pasted={self.max_num_pasted})"
