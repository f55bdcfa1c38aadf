"""The RTMDet stage-1 pipeline (CachedMosaic → RandomResize+Crop → HSV → flip → pad → CachedMixUp →
pack) gives bit-identical outputs for a fixed seed: the sha256 digests below were computed with the
code before its speed-ups (HSV through Pillow ``point``, flip without a strided copy, normalisation
in place), so any change of the augmented pixels, boxes or labels shows here."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from detflow.config.train import MixUpConfig, MosaicConfig, RecipeConfig
from detflow.data.augment_recipes import build_augmentation


class _RandomDataset:
    """12 images of varied sizes with 1–5 boxes each, all from one seeded generator."""

    def __init__(self, n: int = 12):
        rng = np.random.default_rng(123)
        self.samples = []
        for i in range(n):
            h, w = int(rng.integers(200, 420)), int(rng.integers(200, 420))
            # smooth-ish content so resizes and HSV see realistic gradients, plus noise
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([(xx * (1 + i) + yy) % 256, (yy * 2 + i * 17) % 256, (xx + yy * 3) % 256], -1)
            image = np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
            m = int(rng.integers(1, 6))
            x0, y0 = rng.uniform(0, w * 0.7, m), rng.uniform(0, h * 0.7, m)
            boxes = np.stack([x0, y0, np.minimum(x0 + rng.uniform(10, w * 0.3, m), w),
                              np.minimum(y0 + rng.uniform(10, h * 0.3, m), h)], 1).astype(np.float32)
            self.samples.append({"image": image, "boxes": boxes, "labels": rng.integers(0, 3, m).astype(np.int64),
                                 "masks": None, "image_id": i, "orig_size": (h, w), "scale": 1.0})
        self.image_ids = list(range(n))

    def __len__(self):
        return len(self.samples)

    def load_sample(self, i):
        s = self.samples[i]
        return {**s, "image": s["image"].copy(), "boxes": s["boxes"].copy()}


def _digest(size: str, cache: bool, n: int = 24) -> str:
    from detmodels import InputSpec

    ds = _RandomDataset()
    cfg = RecipeConfig(name="rtmdet", mosaic=MosaicConfig(enabled=True, cache=cache),
                       mixup=MixUpConfig(enabled=True, cache=cache))
    aug = build_augmentation(cfg, size=size, image_size=320, epochs=300, input_spec=InputSpec(), seed=0)
    pipeline = aug.train_transforms(0, dataset=ds)
    order = np.random.default_rng(1).integers(len(ds), size=n).tolist()
    h = hashlib.sha256()
    for i in order:
        image, target, meta = pipeline(ds.load_sample(i))
        h.update(image.contiguous().numpy().tobytes())
        h.update(str(tuple(image.shape)).encode())
        h.update(target["boxes"].numpy().tobytes())
        h.update(target["labels"].numpy().tobytes())
        h.update(repr((meta["image_id"], round(meta["scale"], 9), meta["input_size"])).encode())
    return h.hexdigest()


EXPECTED = {  # computed before the speed-ups, on Pillow 13.0 / numpy / torch of the project venv
    ("tiny", True): "a15da4b8ce6527c9b03a0a1f07bba90456af6e0696bd5287ba865993caa256dd",
    ("tiny", False): "730439a500c84b30b92860de11aa707d1290c7ef0a38bfdd9f79847fdce6a015",
    ("s", True): "d887d8e80a1739bdcf2063b15ee381e6742d29f04fc66f11cea1e33b9782bb97",
}


@pytest.mark.parametrize("size,cache", [("tiny", True), ("tiny", False), ("s", True)])
def test_rtmdet_stage1_outputs_are_pinned(size, cache):
    torch.set_num_threads(1)
    assert _digest(size, cache) == EXPECTED[(size, cache)]
