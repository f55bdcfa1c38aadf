"""Tiny synthetic samples for the augmentation tests (test_geometric / test_mixing / test_recipes).

Load with::

    _spec = importlib.util.spec_from_file_location("conftest_augment", Path(__file__).with_name("conftest_augment.py"))
"""
from __future__ import annotations

from typing import Any

import numpy as np


def rect_sample(h: int, w: int, rects: list[tuple[int, int, int, int]], *, image_id: int = 1,
                fill: int | None = None, seed: int = 0, with_masks: bool = True) -> dict[str, Any]:
    """A sample whose instances are rectangles ``(x0, y0, x1, y1)`` (mask = the rectangle, box = its
    tight box). ``fill``: a constant image value, else random pixels."""
    rng = np.random.default_rng(seed)
    image = (np.full((h, w, 3), fill, np.uint8) if fill is not None
             else rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    masks = np.zeros((len(rects), h, w), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        masks[k, y0:y1, x0:x1] = 1
    return {"image": image, "boxes": np.array(rects, np.float32).reshape(-1, 4),
            "labels": np.arange(len(rects), dtype=np.int64), "masks": masks if with_masks else None,
            "image_id": image_id, "orig_size": (h, w), "scale": 1.0}


def random_sample(image_id: int, *, h: int = 48, w: int = 64, n: int = 3, seed: int | None = None) -> dict[str, Any]:
    """``n`` random rectangles (8–20 px) on a random ``h×w`` image."""
    rng = np.random.default_rng(image_id if seed is None else seed)
    rects = []
    for _ in range(n):
        bw, bh = (int(v) for v in rng.integers(8, 20, 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        rects.append((x0, y0, x0 + bw, y0 + bh))
    return rect_sample(h, w, rects, image_id=image_id, seed=image_id)


class ListDataset:
    """A dataset of fixed samples with the CocoDataset surface the mixing transforms use."""

    def __init__(self, samples: list[dict[str, Any]]):
        self.samples = samples
        self.image_ids = [s["image_id"] for s in samples]
        self.loads = 0

    def __len__(self) -> int:
        return len(self.samples)

    def load_sample(self, index: int) -> dict[str, Any]:
        self.loads += 1
        return self.samples[index]


def box_mask_gap(sample: dict[str, Any]) -> float:
    """Largest |box − tight box of its mask| over the sample's instances (0 when none)."""
    from detflow.data.geometric import masks_to_boxes

    if len(sample["boxes"]) == 0:
        return 0.0
    return float(np.abs(masks_to_boxes(sample["masks"]) - sample["boxes"]).max())


def check_consistent(sample: dict[str, Any]) -> None:
    """Shapes agree and every box lies inside the image with positive size."""
    h, w = sample["image"].shape[:2]
    m = len(sample["boxes"])
    assert sample["image"].dtype == np.uint8 and sample["image"].shape[2] == 3
    assert sample["labels"].shape == (m,)
    if sample["masks"] is not None:
        assert sample["masks"].shape == (m, h, w)
    b = sample["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
