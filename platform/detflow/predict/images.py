"""Prediction on images: a folder of images or a COCO annotation file → COCO results (+ drawings).

Example::

    from detflow.predict import predict
    results = predict("runs/rtmdet-tiny-synth-…/best", images_dir="data/synth/images",
                      out="preds.json", draw_dir="preds/")
    results = predict("out/int8", images_dir="data/synth/images", backend="onnxruntime")
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .detector import Predictor, load_predictor
from .progress import progress_bar

__all__ = ["predict", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _images_only_coco(images_dir: Path, predictor: Predictor) -> dict[str, Any]:
    """A COCO dict without annotations listing every image of ``images_dir`` (ids 1..N)."""
    from PIL import Image

    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(f"--images {str(images_dir)!r}: expected a directory with image files "
                             f"({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for i, p in enumerate(files, start=1):
        with Image.open(p) as im:
            w, h = im.size
        images.append({"id": i, "file_name": str(p.relative_to(images_dir)), "width": w, "height": h})
    cats = [{"id": int(c), "name": n} for c, n in zip(predictor.category_ids, predictor.class_names)]
    return {"images": images, "annotations": [], "categories": cats}


def _dataset(images_dir: str | None, annotations: str | None, predictor: Predictor, tmp: Path):
    from ..atomic import atomic_write
    from ..data import CocoDataset

    if annotations is not None:
        ann = Path(annotations)
        if not ann.is_file():
            raise UserInputError(f"--annotations {str(ann)!r}: expected a COCO JSON file")
        return CocoDataset(ann, Path(images_dir) if images_dir else ann.parent), False
    if images_dir is None:
        raise UserInputError("predict: expected --images DIR or --annotations FILE")
    root = Path(images_dir)
    if not root.is_dir():
        raise UserInputError(f"--images {str(root)!r}: expected a directory")
    ann = tmp / "images.json"
    atomic_write(ann, json.dumps(_images_only_coco(root, predictor)))
    return CocoDataset(ann, root), True


def predict(source: str | os.PathLike, *, images_dir: str | os.PathLike | None = None,
            annotations: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
            draw_dir: str | os.PathLike | None = None, batch_size: int = 4, score_thr: float | None = None,
            draw_thr: float = 0.3, device: str | None = None, backend: str = "torch",
            progress: bool = False) -> list[dict]:
    """Detect on every image with the artifact ``source`` (see :func:`~detflow.predict.load_predictor`)
    and return (and write to ``out``) COCO result dicts.

    With ``images_dir`` only, image ids are 1..N in sorted file order and each result also carries
    its ``file_name``. With ``annotations`` (+ ``images_dir``, default: the file's directory) the
    ids are the file's. ``draw_dir`` gets one PNG per image with detections above ``draw_thr``.
    """
    from ..data import build_dataloader
    from ..evaluation import detections_to_coco

    predictor = load_predictor(source, backend=backend, device=device, score_thr=score_thr, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="detflow-predict-") as tmp:
        dataset, images_only = _dataset(None if images_dir is None else str(images_dir),
                                        None if annotations is None else str(annotations), predictor, Path(tmp))
        dataset.set_transforms(predictor.transforms())
        loader = build_dataloader(dataset, predictor.batch_size, shuffle=False, num_workers=0)
        dets, ids = [], []
        with progress_bar(len(dataset), "predict", enabled=progress) as advance:
            for images, _, metas in loader:
                dets += predictor(images, metas)
                ids += [int(m["image_id"]) for m in metas]
                advance(len(metas))
    results = detections_to_coco(dets, ids, predictor.category_ids)
    if images_only:
        names = {img["id"]: img["file_name"] for img in dataset.coco.dataset["images"]}
        for r in results:
            r["file_name"] = names[r["image_id"]]
    if out is not None:
        from ..atomic import atomic_write

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out), json.dumps(results))
    if draw_dir is not None:
        _draw(dataset, dets, ids, predictor.class_names, Path(draw_dir), draw_thr)
    return results


def _draw(dataset: Any, dets: list, ids: list[int], class_names: list[str], draw_dir: Path, thr: float) -> None:
    from ..train.draw import draw_detections

    draw_dir.mkdir(parents=True, exist_ok=True)
    for det, image_id in zip(dets, ids):
        path = dataset.image_path(dataset.image_ids.index(image_id))
        draw_detections(path, det, class_names, thr=thr).save(draw_dir / f"{Path(path).stem}.png")
