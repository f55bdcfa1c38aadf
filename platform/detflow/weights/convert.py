"""Official checkpoint file → detflow checkpoint directory (``model.pt`` + ``config.yaml`` +
``meta.json``, layout in docs/architecture.md), shared by ``detflow models convert`` and
``detflow models pull``.

Example::

    from detflow.weights.convert import convert_official
    convert_official("rtmdet_tiny_…-78e30dcc.pth", "rtmdet_tiny", "mmdet", "ckpt/rtmdet_tiny_coco")
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ..errors import UserInputError

__all__ = ["convert_official", "write_checkpoint_dir", "COCO_CLASS_NAMES", "COCO_CATEGORY_IDS", "NUM_COCO_CLASSES"]

# The 80 COCO-2017 detection classes (contiguous order) and their ids in instances_*.json.
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_CATEGORY_IDS = tuple(
    [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
     *range(84, 91)]
)
NUM_COCO_CLASSES = 80


def write_checkpoint_dir(model: Any, out: Path, *, model_name: str, input_size: int, meta_extra: dict | None = None,
                         class_names: tuple[str, ...] = COCO_CLASS_NAMES,
                         category_ids: tuple[int, ...] = COCO_CATEGORY_IDS) -> Path:
    """Write ``out/{model.pt, config.yaml, meta.json}`` in the layout of docs/architecture.md, atomically
    (:func:`detflow.engine.checkpoint.save_checkpoint`: a crash never leaves a half-written directory).

    There is no training state: optimizer/scheduler/scaler/rng are ``None`` and epoch/step 0. The
    config's data split is a placeholder (empty paths) that fine-tuning replaces.
    """
    from ..version import __version__
    from ..config.train import DataConfig, DatasetSplit, TrainConfig, model_config_class
    from ..engine.checkpoint import save_checkpoint

    state = {"model": model.state_dict(), "ema": None, "optimizer": None, "scheduler": None, "scaler": None,
             "epoch": 0, "step": 0, "rng": None}
    cfg = TrainConfig(name=model_name.replace("/", "_"),
                      model=model_config_class(model_name)(name=model_name, num_classes=len(class_names)),
                      data=DataConfig(train=DatasetSplit(annotations="", images=""), image_size=input_size))
    meta = {"model": model_name, "num_classes": len(class_names), "category_ids": list(category_ids),
            "class_names": list(class_names), "epoch": 0, "metrics": {}, "detflow_version": __version__,
            **(meta_extra or {})}
    return save_checkpoint(out, state=state, config=cfg, meta=meta)


def convert_official(checkpoint: str | Path, model: str, source: str, out: str | Path, *,
                     meta_extra: dict | None = None) -> tuple[Path, int]:
    """Load ``checkpoint`` (a reference implementation's COCO file) into a fresh 80-class ``model``
    with ``detmodels.load_official_weights`` (strict: every tensor used, shapes checked) and write it
    to ``out``. Returns ``(out, number of parameters)``.

    Raises:
        UserInputError: unknown model, missing file, or a file that is not ``model``'s ``source``
            weights (one line: ``FILE: cannot load as SOURCE weights of MODEL: …``).
    """
    import detmodels

    checkpoint = Path(checkpoint)
    try:
        entry = detmodels.get_model_entry(model)
    except KeyError as exc:
        raise UserInputError(f"--model: {exc.args[0]}") from None
    if not checkpoint.is_file():
        raise UserInputError(f"{checkpoint}: no such checkpoint file")
    net = detmodels.create_model(model, num_classes=NUM_COCO_CLASSES)
    try:
        detmodels.load_official_weights(net, checkpoint, source=source)
    except (ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        # WeightsError (a ValueError): unmapped keys, shape mismatches, unknown source; others: not a checkpoint
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{checkpoint}: cannot load as {source} weights of {model}: {why}") from None
    meta = {"source": source, "source_checkpoint": str(checkpoint.resolve()), **(meta_extra or {})}
    write_checkpoint_dir(net, Path(out), model_name=model, input_size=entry.input_size, meta_extra=meta)
    return Path(out), detmodels.count_params(net)
