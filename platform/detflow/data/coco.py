"""COCO detection / instance-segmentation dataset on pycocotools.

Items are sample dicts (see ``detflow.data``): ``image`` H×W×3 uint8 RGB, ``boxes`` M×4 float32 xyxy
pixels, ``labels`` M int64 contiguous indices, ``masks`` M×H×W uint8 or None, ``image_id``,
``orig_size`` (h, w), ``scale`` 1.0. Crowd annotations (``iscrowd=1``) and boxes without area are
left out of samples; pycocotools keeps them for evaluation.

Example::

    ds = CocoDataset("data/synth/train.json", "data/synth/images", with_masks=True)
    sample = ds.load_sample(0)
    ds.category_ids[sample["labels"][0]]   # back to the COCO category id
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from .check import non_finite_coordinates
from .geometric import clip_boxes
from .imageops import decode_image

__all__ = ["CocoDataset", "load_coco", "read_image"]

Sample = dict[str, Any]


def load_coco(annotations: str | Path):
    """A pycocotools ``COCO`` index of ``annotations`` (its stdout chatter silenced).

    Raises:
        DataError: the file is missing, not JSON, or not a COCO object.
    """
    from pycocotools.coco import COCO

    from ..artifact_store import local_path

    path = local_path(annotations)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        dataset = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: not a COCO file (expected an object with 'images', 'annotations' and "
                        f"'categories' lists); run `detflow data check {path}`")
    dataset.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO file (missing or malformed field {exc}); "
                        f"run `detflow data check {path}`") from None
    return coco


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to ``H×W×3`` uint8 RGB: OpenCV decodes (the fastest decoder at hand;
    Pillow only reads the header, for the size check, and decodes what OpenCV cannot).

    Raises:
        DataError: missing or undecodable file, or a decompression bomb (more than twice Pillow's
            ``Image.MAX_IMAGE_PIXELS``).
    """
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:  # lazy: header only, raises on a decompression bomb
            image = decode_image(data)
            if image is not None and image.shape[:2] == (img.height, img.width):
                return image
            return np.array(img if img.mode == "RGB" else img.convert("RGB"))  # RGB: no converted copy
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refusing a decompression bomb ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


class CocoDataset:
    """A COCO annotation file plus its image directory, as a map-style dataset of sample dicts.

    Args:
        annotations: COCO JSON file.
        images_dir: directory the ``file_name`` entries are relative to.
        transforms: callable ``sample -> anything`` applied by ``__getitem__`` (e.g. a ``Compose``
            ending in ``PackDetInputs``); ``None`` returns the raw sample.
        with_masks: decode polygon / RLE segmentations to ``masks`` (M×H×W uint8).
        filter_empty: drop images that have no usable (non-crowd, positive-size) annotation.

    Attributes:
        coco: the pycocotools ``COCO`` index (crowd annotations included, for evaluation).
        category_ids: COCO category id of each contiguous label (sorted ids).
        class_names: category name of each contiguous label.
        image_ids: COCO image id of each dataset index.
    """

    def __init__(self, annotations: str | Path, images_dir: str | Path, *,
                 transforms: Callable[[Sample], Any] | None = None, with_masks: bool = False,
                 filter_empty: bool = False):
        from ..artifact_store import local_path  # stored datasets (a synth step's output) are read locally

        self.annotations = local_path(annotations)
        self.images_dir = local_path(images_dir)
        self.coco = load_coco(self.annotations)
        self.with_masks = with_masks
        self.transforms = transforms
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.cat_to_label: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if filter_empty:
            ids = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns.get(i, []))]
        self.image_ids: list[int] = ids
        self._instances: dict[int, tuple[np.ndarray, np.ndarray, list[dict]]] = {}  # see _usable_instances

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Any:
        sample = self.load_sample(index)
        return self.transforms(sample) if self.transforms is not None else sample

    def set_transforms(self, transforms: Callable[[Sample], Any] | None) -> None:
        """Replace the transform pipeline (e.g. switch off Mosaic for the last epochs)."""
        self.transforms = transforms

    def label_to_category(self, label: int) -> int:
        return self.category_ids[int(label)]

    def category_to_label(self, category_id: int) -> int:
        return self.cat_to_label[int(category_id)]

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def _usable(self, ann: dict) -> bool:
        """Whether ``ann`` becomes a training box (crowd and empty boxes do not).

        Raises:
            DataError: NaN or infinite box / polygon coordinates (pycocotools would keep them for
                evaluation, so they are refused rather than dropped).
        """
        problem = non_finite_coordinates(ann)
        if problem:
            raise DataError(f"{self.annotations}: annotation {ann.get('id')}: {problem}; "
                            f"run `detflow data check {self.annotations} --images {self.images_dir}`")
        if ann.get("iscrowd", 0) or ann.get("category_id") not in self.cat_to_label:
            return False
        bbox = ann.get("bbox")
        return isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0

    def load_sample(self, index: int) -> Sample:
        """The raw (un-transformed) sample of dataset index ``index``.

        Raises:
            DataError: missing/undecodable image or a decompression bomb, an image whose size differs
                from its record, NaN or infinite coordinates in one of its annotations.
        """
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = read_image(self.image_path(index))
        h, w = image.shape[:2]
        if ("height" in info and info["height"] != h) or ("width" in info and info["width"] != w):
            raise DataError(f"{self.annotations}: image id {image_id} ({info['file_name']}) is {w}x{h} "
                            f"but the annotation says {info.get('width')}x{info.get('height')}")
        boxes, labels, anns = self._usable_instances(image_id)
        boxes = clip_boxes(boxes.copy(), 0, 0, w, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        masks = None
        if self.with_masks:
            anns = [a for a, k in zip(anns, keep) if k]
            masks = np.zeros((len(anns), h, w), dtype=np.uint8)
            for k, ann in enumerate(anns):
                if ann.get("segmentation"):
                    masks[k] = self._decode_mask(ann, h, w)
        return {"image": image, "boxes": boxes, "labels": labels, "masks": masks, "image_id": int(image_id),
                "orig_size": (h, w), "scale": 1.0}

    def _usable_instances(self, image_id: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """``(boxes, labels, anns)`` of the usable annotations of ``image_id``: M×4 float32 xyxy
        boxes (unclipped), M int64 labels, the M annotation dicts. Parsed once per image and kept
        (the annotations do not change while the dataset lives)."""
        cached = self._instances.get(image_id)
        if cached is None:
            anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a)]
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            labels = np.array([self.cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)
            cached = self._instances[image_id] = (boxes, labels, anns)
        return cached

    def _decode_mask(self, ann: dict, h: int, w: int) -> np.ndarray:
        """Polygon(s), compressed or uncompressed RLE -> ``H×W`` uint8 (pycocotools.mask)."""
        from pycocotools import mask as mask_utils

        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        return mask_utils.decode(rle).astype(np.uint8)
