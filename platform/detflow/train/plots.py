"""Training artifacts: loss/mAP curves, detections drawn on a few val images, checkpoint links.

The PR curve is written by rank 0 at the final evaluation (``evaluate_coco(plot_pr=…)``) and logged
by the worker; everything here runs on the driver inside the training's MLflow run.
"""
from __future__ import annotations

import colorsys
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["draw_detections", "curve_keys", "log_training_artifacts"]

log = logging.getLogger(__name__)


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


def curve_keys(history: Sequence[dict]) -> list[str]:
    """Loss terms, lr, images/s and val mAPs present in ``history`` (plot panel order)."""
    keys = sorted({k for h in history for k in h})
    losses = [k for k in keys if k.startswith("train/loss")]
    vals = [k for k in ("val/bbox_mAP", "val/bbox_mAP50", "val/segm_mAP", "val/segm_mAP50") if k in keys]
    return losses + vals + [k for k in ("train/lr", "train/images_per_s", "train/data_fraction") if k in keys]


def _log_predictions(best: str, cfg: Any, n: int = 4) -> None:
    import mlflow

    from ..data import CocoDataset
    from .predict import predict

    if cfg.data.val is None:
        return
    val = CocoDataset(cfg.data.val.annotations, cfg.data.val.images)
    with tempfile.TemporaryDirectory(prefix="detflow-draw-") as tmp:
        subset = {**val.coco.dataset, "images": val.coco.dataset["images"][:n]}
        ids = {img["id"] for img in subset["images"]}
        subset["annotations"] = [a for a in val.coco.dataset.get("annotations", []) if a["image_id"] in ids]
        ann = Path(tmp) / "subset.json"
        import json

        ann.write_text(json.dumps(subset))
        predict(best, annotations=ann, images_dir=cfg.data.val.images, draw_dir=Path(tmp) / "draw")
        mlflow.log_artifacts(str(Path(tmp) / "draw"), "predictions")


def log_training_artifacts(cfg: Any, meta: dict, *, best: str, last: str) -> None:
    """In the active MLflow run: checkpoint locations, best-so-far metrics, curves, drawn predictions.

    Plotting problems are logged as warnings: they never fail a finished training.
    """
    import mlflow

    from .. import tracking

    mlflow.set_tags({"detflow.best_checkpoint": best, "detflow.last_checkpoint": last,
                     "detflow.recipe_switch_epoch": str(meta.get("switch_epoch", ""))})
    history = list(meta.get("history", []))
    best_metrics = ((meta.get("best") or {}).get("metrics")) or {}
    tracking.log_best({k: v for k, v in best_metrics.items() if k.startswith("val/")})
    steps = [
        ("curves", lambda: tracking.log_figure(tracking.plot_curves(history, curve_keys(history)), "plots/curves.png")),
        ("predictions", lambda: _log_predictions(best, cfg)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # artifacts are best effort once the model is trained
            log.warning("could not log %s: %s", what, exc)
