"""Small real checkpoints for tests that need one without training."""
from __future__ import annotations

from pathlib import Path

import torch


def detecting_rtmdet_tiny(synth, dst: Path) -> Path:
    """rtmdet_tiny (4 classes, 64 px) saved at ``dst`` with head weights perturbed so that it detects
    boxes of varied scores (an untrained model's scores all sit at the 0.01 prior)."""
    import detmodels
    from detflow.config import TrainConfig, parse_config
    from detflow.engine.checkpoint import save_checkpoint

    cfg = parse_config(TrainConfig, {"model": {"name": "rtmdet_tiny", "num_classes": 4},
                                     "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                                              "image_size": 64}})
    torch.manual_seed(0)
    state = detmodels.create_model("rtmdet_tiny", num_classes=4).state_dict()
    for key, value in state.items():
        if key.startswith("bbox_head.rtm_cls") and key.endswith("weight"):
            value.add_(0.3 * torch.randn(value.shape))
        if key.startswith("bbox_head.rtm_cls") and key.endswith("bias"):
            value.fill_(-1.0)
        if key.startswith("bbox_head.rtm_reg") and key.endswith("bias"):
            value.fill_(1.0)
    meta = {"model": "rtmdet_tiny", "num_classes": 4, "category_ids": [1, 2, 3, 4],
            "class_names": ["a", "b", "c", "d"], "epoch": 0, "metrics": {}, "image_size": 64}
    return save_checkpoint(dst, state={"model": state, "ema": None}, config=cfg, meta=meta)
