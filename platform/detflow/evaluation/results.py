"""Convert post-processed :class:`detmodels.Detections` into COCO result dicts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["detections_to_coco", "encode_mask"]


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE of one ``h×w`` binary mask, ``counts`` as a JSON-safe str."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def detections_to_coco(dets: Sequence, image_ids: Sequence[int], category_ids: Sequence[int],
                       *, decimals: int = 2) -> list[dict]:
    """COCO results from per-image detections.

    Args:
        dets: one ``detmodels.Detections`` per image: boxes ``K×4`` xyxy (original image pixels),
            scores ``K``, labels ``K`` (contiguous indices), optional masks ``K×h×w`` bool.
        image_ids: COCO image id of each entry in ``dets``.
        category_ids: COCO category id of each contiguous label (``dataset.category_ids``).
        decimals: rounding of box coordinates (keeps result files small).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "segmentation": RLE]}]``.
    """
    if len(dets) != len(image_ids):
        raise ValueError(f"got {len(dets)} detections for {len(image_ids)} image ids")
    out: list[dict] = []
    for det, image_id in zip(dets, image_ids):
        boxes = det.boxes.detach().float().cpu().numpy().reshape(-1, 4)
        scores = det.scores.detach().float().cpu().numpy().reshape(-1)
        labels = det.labels.detach().cpu().numpy().reshape(-1).astype(np.int64)
        masks = det.masks.detach().cpu().numpy() if det.masks is not None else None
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).round(decimals)
        for k in range(len(scores)):
            label = int(labels[k])
            if not 0 <= label < len(category_ids):
                raise ValueError(f"label {label} outside [0, {len(category_ids)}) for image {image_id}")
            result = {"image_id": int(image_id), "category_id": int(category_ids[label]),
                      "bbox": [float(v) for v in xywh[k]], "score": round(float(scores[k]), 5)}
            if masks is not None:
                result["segmentation"] = encode_mask(masks[k])
            out.append(result)
    return out
