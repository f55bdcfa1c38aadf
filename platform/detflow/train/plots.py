"""Training artifacts: loss/mAP curves, detections drawn on a few val images, checkpoint links.

The PR curve is written by rank 0 at the final evaluation (``evaluate_coco(plot_pr=…)``) and logged
by the worker; everything here runs on the driver inside the training's MLflow run.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .draw import draw_detections  # noqa: F401  (re-exported; predict draws with it too)

__all__ = ["draw_detections", "curve_keys", "log_training_artifacts"]

log = logging.getLogger(__name__)


def curve_keys(history: Sequence[dict]) -> list[str]:
    """Loss terms, lr, images/s and val mAPs present in ``history`` (plot panel order)."""
    keys = sorted({k for h in history for k in h})
    losses = [k for k in keys if k.startswith("train/loss")]
    vals = [k for k in ("val/bbox_mAP", "val/bbox_mAP50", "val/segm_mAP", "val/segm_mAP50") if k in keys]
    return losses + vals + [k for k in ("train/lr", "train/images_per_s", "train/data_fraction") if k in keys]


def _log_predictions(run: Any, best: str, cfg: Any, n: int = 4) -> None:
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
        from ..atomic import atomic_write

        atomic_write(ann, json.dumps(subset))
        predict(best, annotations=ann, images_dir=cfg.data.val.images, draw_dir=Path(tmp) / "draw")
        run.log_artifacts(Path(tmp) / "draw", "predictions")


def _early_stop_tags(early: dict | None) -> dict[str, str]:
    """MLflow tags of a run ended by ``train.patience`` (epochs counted from 1); none otherwise."""
    if not early or early.get("stopped_epoch") is None:
        return {}
    return {"detflow.early_stop_epoch": str(int(early["stopped_epoch"]) + 1),
            "detflow.early_stop_best_epoch": str(int(early["best_epoch"]) + 1),
            "detflow.early_stop": f"stopped at epoch {int(early['stopped_epoch']) + 1}: {early.get('metric')} best "
                                  f"{float(early['best']):.4g} at epoch {int(early['best_epoch']) + 1}"}


def log_training_artifacts(cfg: Any, meta: dict, *, best: str, last: str) -> None:
    """In the active MLflow run: checkpoint locations, best-so-far metrics, curves, drawn predictions.

    Everything here is best effort once the model is trained: a plotting problem or a tracking
    outage is logged as a warning and never fails the training.
    """
    from .. import tracking

    run = tracking.active_run()
    history = list(meta.get("history", []))
    best_metrics = ((meta.get("best") or {}).get("metrics")) or {}
    steps = [
        ("tags", lambda: run.set_tags({"detflow.best_checkpoint": best, "detflow.last_checkpoint": last,
                                       "detflow.recipe_switch_epoch": str(meta.get("switch_epoch", "")),
                                       **_early_stop_tags(meta.get("early_stop"))})),
        ("best metrics", lambda: tracking.log_best({k: v for k, v in best_metrics.items() if k.startswith("val/")})),
        ("curves", lambda: run.log_figure(tracking.plot_curves(history, curve_keys(history)), "plots/curves.png")),
        ("predictions", lambda: _log_predictions(run, best, cfg)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 — artifacts are best effort once the model is trained
            log.warning("could not log %s: %s", what, exc)
