"""Detections drawn on an image: boxes, class names with scores, instance masks (one colour per class).

Example::

    from detflow.train.draw import draw_detections
    draw_detections("img.png", det, ["circle", "square"], thr=0.3).save("img-det.png")
"""
from __future__ import annotations

import colorsys
from typing import Any, Sequence

import numpy as np

__all__ = ["draw_detections"]


def _color(label: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Any, det: Any, class_names: Sequence[str], *, thr: float = 0.3):
    """A PIL image (``image``: path, PIL image or H×W×3 uint8) with boxes, labels and masks drawn."""
    from PIL import Image, ImageDraw

    if isinstance(image, np.ndarray):
        canvas = Image.fromarray(image).convert("RGB")
    elif isinstance(image, Image.Image):
        canvas = image.convert("RGB")
    else:
        canvas = Image.open(image).convert("RGB")
    keep = (det.scores >= thr).nonzero().flatten().tolist()
    if det.masks is not None and keep:
        overlay = np.asarray(canvas).astype(np.float32)
        for i in keep:
            m = det.masks[i].cpu().numpy().astype(bool)
            if m.shape == overlay.shape[:2]:
                overlay[m] = 0.5 * overlay[m] + 0.5 * np.array(_color(int(det.labels[i])), np.float32)
        canvas = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i in keep:
        label = int(det.labels[i])
        x0, y0, x1, y1 = (float(v) for v in det.boxes[i])
        name = class_names[label] if label < len(class_names) else str(label)
        draw.rectangle([x0, y0, x1, y1], outline=_color(label), width=2)
        draw.text((x0 + 2, max(y0 - 11, 0)), f"{name} {float(det.scores[i]):.2f}", fill=_color(label))
    return canvas
