"""Training artifacts: loss/mAP curves, detections drawn on a few val images, checkpoint links.

The PR curve is written by rank 0 at the final evaluation (``evaluate_coco(plot_pr=…)``) and logged
by the worker; everything here runs on the driver inside the training's MLflow run.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .draw import draw_detections  # noqa: F401  (re-exported; detflow.predict draws with it too)

__all__ = ["draw_detections", "curve_keys", "log_training_artifacts"]

log = logging.getLogger(__name__)


def curve_keys(history: Sequence[dict]) -> list[str]:
    """Loss terms, lr, images/s and val mAPs present in ``history`` (plot panel order)."""
    keys = sorted({k for h in history for k in h})
    losses = [k for k in keys if k.startswith("train/loss")]
    vals = [k for k in ("val/bbox_mAP", "val/bbox_mAP50", "val/segm_mAP", "val/segm_mAP50") if k in keys]
    return losses + vals + [k for k in ("train/lr", "train/images_per_s", "train/data_wait_fraction") if k in keys]


def _log_predictions(run: Any, best: str, cfg: Any, n: int = 4) -> None:
    """The best checkpoint's detections drawn on the first ``n`` val images, as ``predictions/*.png``."""
    from ..data import CocoDataset, build_dataloader, build_val_transforms
    from ..engine.checkpoint import load_checkpoint_model
    from ..engine.loop import predict_batches

    if cfg.data.val is None:
        return
    model, _, meta = load_checkpoint_model(best)
    size = int(meta.get("image_size") or cfg.data.image_size)
    val = CocoDataset(cfg.data.val.annotations, cfg.data.val.images,
                      transforms=build_val_transforms(size, model.input_spec))
    loader = build_dataloader(val, n, shuffle=False, num_workers=0)
    dets, ids = predict_batches(model, loader, score_thr=cfg.train.score_thr, nms_iou=cfg.train.nms_iou,
                                max_det=cfg.train.max_det, max_batches=1)
    with tempfile.TemporaryDirectory(prefix="detflow-draw-") as tmp:
        for det, image_id in zip(dets, ids):
            path = val.image_path(val.image_ids.index(image_id))
            draw_detections(path, det, meta["class_names"]).save(Path(tmp) / f"{Path(path).stem}.png")
        run.log_artifacts(Path(tmp), "predictions")


def _early_stop_tags(early: dict | None) -> dict[str, str]:
    """MLflow tags of a run ended by ``train.patience`` (epochs counted from 1); none otherwise."""
    if not early or early.get("stopped_epoch") is None:
        return {}
    return {"detflow.early_stop_epoch": str(int(early["stopped_epoch"]) + 1),
            "detflow.early_stop_best_epoch": str(int(early["best_epoch"]) + 1),
            "detflow.early_stop": f"stopped at epoch {int(early['stopped_epoch']) + 1}: {early.get('metric')} best "
                                  f"{float(early['best']):.4g} at epoch {int(early['best_epoch']) + 1}"}


def log_training_artifacts(cfg: Any, meta: dict, *, best: str, last: str, model_id: str | None = None) -> None:
    """In the active MLflow run: checkpoint locations, best-so-far metrics (attached to the logged
    model ``model_id`` of the best checkpoint, when given), curves, drawn predictions.

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
        ("best metrics", lambda: tracking.log_best({k: v for k, v in best_metrics.items() if k.startswith("val/")},
                                                        model_id=model_id)),
        ("curves", lambda: run.log_figure(tracking.plot_curves(history, curve_keys(history)), "plots/curves.png")),
        ("predictions", lambda: _log_predictions(run, best, cfg)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 — artifacts are best effort once the model is trained
            log.warning("could not log %s: %s", what, exc)
