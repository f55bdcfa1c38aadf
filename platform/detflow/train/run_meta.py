"""What a training run shows in the MLflow UI beyond its metrics: its description, source and
grouping tags, its train/val dataset inputs (:func:`log_train_inputs`), and the best checkpoint as
a logged model with its validation metrics (:func:`log_best_model`)."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ..config.train import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["train_tags", "log_train_inputs", "log_best_model"]


def _family_size(model: str) -> tuple[str | None, str | None]:
    import detmodels

    try:
        entry = detmodels.get_model_entry(model)
    except Exception:  # noqa: BLE001 — a custom model: no family/size columns
        return None, None
    return entry.family, entry.size


def train_tags(cfg: TrainConfig, extra: Mapping[str, Any] | None = None, *, source: str = "detflow train") -> dict[str, str]:
    """Description (``train rtmdet_tiny on synth (400 img), 18 epochs, 2 workers``; a sweep trial's
    starts ``sweep NAME trial LABEL:`` when ``extra`` tags say so), source and family/size tags of a
    training run of ``cfg`` (paths resolved)."""
    from .. import tracking
    from ..tracking.datasets import data_root_name

    family, size = _family_size(cfg.model.name)
    images = tracking.count_images(cfg.data.train.images)
    text = tracking.train_description(cfg.model.name, data_root_name(cfg.data.train.annotations), images,
                                      epochs=cfg.train.epochs, workers=cfg.scaling.workers)
    extra = dict(extra or {})
    if extra.get("detflow.sweep") and extra.get("detflow.trial_label"):
        text = f"sweep {extra['detflow.sweep']} trial {extra['detflow.trial_label']}: {text}"
    return tracking.readable_tags(text, source=source, family=family, size=size, kind="train")


def log_train_inputs(run: Any, cfg: TrainConfig) -> dict[str, str]:
    """The train and val splits of ``cfg`` as dataset inputs of ``run``; ``context -> digest``."""
    from .. import tracking

    return tracking.log_datasets(run, {"train": cfg.data.train, "val": cfg.data.val})


def log_best_model(run: Any, cfg: TrainConfig, checkpoint: str) -> str | None:
    """The checkpoint directory ``checkpoint`` (local, or in object storage: copied through a
    temporary directory) as a logged model ``<model>-best`` of ``run`` (its metrics are attached
    when the run's ``best/...`` metrics are logged with its id); its ``model_id``, or ``None`` with a
    warning when MLflow is down or the copy fails (e.g. above ``max_download_bytes``): a trained
    model never fails on tracking."""
    from .. import tracking
    from ..artifact_store import download, is_uri
    from ..errors import DetflowError

    if not is_uri(checkpoint) and not Path(checkpoint).is_dir():
        return None
    params = {"model": cfg.model.name, "image_size": cfg.data.image_size, "epochs": cfg.train.epochs,
              "num_classes": cfg.model.num_classes}
    try:
        with tempfile.TemporaryDirectory(prefix="detflow-best-") as tmp:
            files = download(checkpoint, Path(tmp) / "checkpoint") if is_uri(checkpoint) else checkpoint
            return tracking.log_logged_model(run, f"{cfg.model.name}-best", files, model_type="checkpoint",
                                             params=params, tags={"detflow.checkpoint": checkpoint})
    except (tracking.TrackingUnavailable, DetflowError) as exc:  # MLflow down, or the S3 copy failed / too big
        log.warning("could not log the best checkpoint as an MLflow model: %s", exc)
        return None
