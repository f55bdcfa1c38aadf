"""Prediction with a checkpoint: a directory of images or a COCO annotation file → COCO results.

Example::

    from detflow.train import predict
    results = predict("runs/rtmdet-tiny-synth-…/best", images_dir="data/synth/images",
                      out="preds.json", draw_dir="preds/")
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError

__all__ = ["predict", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _images_only_coco(images_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A COCO dict without annotations listing every image of ``images_dir`` (ids 1..N)."""
    from PIL import Image

    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(f"{images_dir}: --images: expected a directory with image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for i, p in enumerate(files, start=1):
        with Image.open(p) as im:
            w, h = im.size
        images.append({"id": i, "file_name": str(p.relative_to(images_dir)), "width": w, "height": h})
    cats = [{"id": int(c), "name": n} for c, n in zip(meta["category_ids"], meta["class_names"])]
    return {"images": images, "annotations": [], "categories": cats}


def _dataset(images_dir: str | None, annotations: str | None, meta: dict, tmp: Path):
    from ..data import CocoDataset

    if annotations is not None:
        ann = Path(annotations)
        if not ann.is_file():
            raise UserInputError(f"{ann}: --annotations: expected a COCO JSON file")
        return CocoDataset(ann, Path(images_dir) if images_dir else ann.parent), False
    if images_dir is None:
        raise UserInputError("predict: expected --images DIR or --annotations FILE")
    root = Path(images_dir)
    if not root.is_dir():
        raise UserInputError(f"{root}: --images: expected a directory")
    ann = tmp / "images.json"
    from ..atomic import atomic_write

    atomic_write(ann, json.dumps(_images_only_coco(root, meta)))
    return CocoDataset(ann, root), True


def predict(checkpoint: str | os.PathLike, *, images_dir: str | os.PathLike | None = None,
            annotations: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
            draw_dir: str | os.PathLike | None = None, batch_size: int = 4, score_thr: float | None = None,
            draw_thr: float = 0.3, device: str | None = None) -> list[dict]:
    """Detect on every image and return (and write to ``out``) COCO result dicts.

    With ``images_dir`` only, image ids are 1..N in sorted file order and each result also carries
    its ``file_name``. With ``annotations`` (+ ``images_dir``, default: the file's directory) the
    ids are the file's. ``draw_dir`` gets one PNG per image with detections above ``draw_thr``.
    """
    from ..data import build_dataloader, build_val_transforms
    from ..engine.checkpoint import load_checkpoint_model
    from ..engine.loop import predict_batches
    from ..evaluation import detections_to_coco
    from .draw import draw_detections

    model, cfg, meta = load_checkpoint_model(checkpoint)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    with tempfile.TemporaryDirectory(prefix="detflow-predict-") as tmp:
        dataset, images_only = _dataset(None if images_dir is None else str(images_dir),
                                        None if annotations is None else str(annotations), meta, Path(tmp))
        dataset.set_transforms(build_val_transforms(int(meta.get("image_size", cfg.data.image_size)), model.input_spec))
        loader = build_dataloader(dataset, batch_size, shuffle=False, num_workers=0)
        thr = cfg.train.score_thr if score_thr is None else score_thr
        dets, ids = predict_batches(model, loader, device=dev, score_thr=thr, nms_iou=cfg.train.nms_iou,
                                    max_det=cfg.train.max_det)
    results = detections_to_coco(dets, ids, meta["category_ids"])
    if images_only:
        names = {img["id"]: img["file_name"] for img in dataset.coco.dataset["images"]}
        for r in results:
            r["file_name"] = names[r["image_id"]]
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        from ..atomic import atomic_write

        atomic_write(Path(out), json.dumps(results))
    if draw_dir is not None:
        Path(draw_dir).mkdir(parents=True, exist_ok=True)
        for det, image_id, index in zip(dets, ids, range(len(ids))):
            path = dataset.image_path(dataset.image_ids.index(image_id))
            draw_detections(path, det, meta["class_names"], thr=draw_thr).save(Path(draw_dir) / f"{Path(path).stem}.png")
    return results
