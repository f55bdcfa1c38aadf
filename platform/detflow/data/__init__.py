"""COCO data: synthetic generator, pycocotools reader, transforms, batching and validation.

Sample-dict contract (what readers produce and transforms consume, numpy):
``image`` H×W×3 uint8 RGB; ``boxes`` M×4 float32 xyxy pixels; ``labels`` M int64 contiguous
indices; ``masks`` M×H×W uint8 or None; ``image_id`` int; ``orig_size`` (h, w); ``scale`` float.
``transforms.PackDetInputs`` is the last step; ``loader.collate_detection`` batches its output
(training batches stay uint8 until ``transforms.normalize_images`` on the training device).

Example::

    from detflow.data import generate_synthetic, CocoDataset, build_val_transforms, build_dataloader
    paths = generate_synthetic("data/synth", num_images=100)
    ds = CocoDataset(paths.val_json, paths.images_dir,
                     transforms=build_val_transforms(320, model.input_spec))
    images, targets, metas = next(iter(build_dataloader(ds, 4, shuffle=False, num_workers=0)))
"""
from .check import CheckReport, check_coco
from .coco import CocoDataset, load_coco, read_image
from .loader import build_dataloader, collate_detection, seed_worker
from .synth import SHAPES, SynthPaths, generate_synthetic, mask_to_polygons
from .transforms import (Compose, LetterboxResize, PackDetInputs, Pad, RandomFlip, Resize,
                         build_basic_train_transforms, build_val_transforms, normalize_images)

__all__ = [
    "CheckReport", "check_coco", "CocoDataset", "load_coco", "read_image", "build_dataloader",
    "collate_detection", "seed_worker", "SHAPES", "SynthPaths", "generate_synthetic", "mask_to_polygons",
    "Compose", "LetterboxResize", "PackDetInputs", "Pad", "RandomFlip", "Resize",
    "build_basic_train_transforms", "build_val_transforms", "normalize_images",
]
