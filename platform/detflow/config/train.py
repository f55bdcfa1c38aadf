"""Typed training configuration (``detflow train CONFIG.yaml``).

Example (``workflows/configs/rtmdet_tiny_synth.yaml``)::

    name: rtmdet-tiny-synth
    model: {name: rtmdet_tiny, neck: {expand_ratio: 0.5}, assigner: {soft_center_alpha: 10.0}}
    data:
      train: {annotations: ../../data/synth/train.json, images: ../../data/synth/images}
      val: {annotations: ../../data/synth/val.json, images: ../../data/synth/images}
      image_size: 320
    recipe: {name: rtmdet}
    train: {epochs: 30, batch_size: 8}
    scaling: {workers: 2}
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator

from .base import StrictModel

__all__ = [
    "DatasetSplit", "DataConfig", "ModelConfig", "OptimizerConfig", "ScheduleConfig", "EMAConfig",
    "TrainLoopConfig", "ScalingConfig", "CheckpointConfig", "TrainConfig", "MosaicConfig",
    "MixUpConfig", "RecipeConfig", "DistillConfig",
]


class DatasetSplit(StrictModel):
    """A COCO annotation file and its image directory (paths relative to the config file)."""

    annotations: str
    images: str


class DataConfig(StrictModel):
    train: DatasetSplit
    val: DatasetSplit | None = None
    image_size: PositiveInt = 640
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    filter_empty: bool = True


class NeckOptions(StrictModel):
    """Neck knobs searched by sweeps: CSP expansion ratio, SE / PPM switches (seed modules)."""

    expand_ratio: float | None = Field(None, gt=0, le=2)
    se: bool | None = None
    ppm: bool | None = None


class AssignerOptions(StrictModel):
    """Label-assignment knobs, e.g. RTMDet's soft centre prior α^(d−β)."""

    soft_center_alpha: float | None = Field(None, gt=1)
    soft_center_beta: float | None = Field(None, ge=0)
    topk: PositiveInt | None = None
    iou_weight: float | None = Field(None, ge=0)


class ModelConfig(StrictModel):
    """Which registered detector, and its overrides (passed to ``detmodels.create_model``)."""

    name: str
    num_classes: PositiveInt | None = Field(None, description="default: the dataset's category count")
    pretrained: str | None = Field(None, description="detflow checkpoint to start from")
    neck: NeckOptions = NeckOptions()
    assigner: AssignerOptions = AssignerOptions()
    head: dict[str, Any] = Field(default_factory=dict, description="family-specific head options")
    spec: str | None = Field(None, description="SpineNet block-spec YAML (model name 'spinenet')")
    extra: dict[str, Any] = Field(default_factory=dict, description="other builder keyword arguments")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        import detmodels

        if name not in detmodels.list_models():
            import difflib

            close = difflib.get_close_matches(name, detmodels.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"a registered model name{hint}")
        return name

    def builder_kwargs(self) -> dict[str, Any]:
        """Keyword overrides for ``create_model`` (only the sections actually set)."""
        kwargs: dict[str, Any] = dict(self.extra)
        for section in ("neck", "assigner"):
            values = getattr(self, section).model_dump(exclude_none=True)
            if values:
                kwargs[section] = values
        if self.head:
            kwargs["head"] = dict(self.head)
        if self.spec:  # a stored spec (a NAS step's output) is read through a local copy
            from ..artifact_store import local_path

            kwargs["spec"] = str(local_path(self.spec))
        return kwargs


class MosaicConfig(StrictModel):
    """(Cached)Mosaic: 4 images on a 2×canvas. ``cache`` selects CachedMosaic (RTMDet §3.3)."""

    enabled: bool = True
    prob: float = Field(1.0, ge=0, le=1)
    cache: bool = True
    max_cached_images: PositiveInt = 40
    random_pop: bool = True


class MixUpConfig(StrictModel):
    """(Cached)MixUp: blend with another (mosaic) image."""

    enabled: bool = True
    prob: float = Field(1.0, ge=0, le=1)
    cache: bool = True
    max_cached_images: PositiveInt = 20
    random_pop: bool = True
    alpha: float | None = Field(None, gt=0, description="Beta(alpha, alpha) mixing ratio; None = 0.5/0.5")


class RecipeConfig(StrictModel):
    """A named data pipeline + optimiser + schedule; every field overrides the recipe's default.

    ``name``: ``rtmdet`` | ``yolov6`` | ``retinanet`` | ``yolov3_asff`` | ``plain`` (resize+flip only).
    Fields left ``None`` take the recipe's (and model size's) paper value.
    """

    name: Literal["rtmdet", "yolov6", "retinanet", "yolov3_asff", "plain"] = "rtmdet"
    mosaic: MosaicConfig | None = None
    mixup: MixUpConfig | None = None
    ratio_range: tuple[float, float] | None = None
    hsv: bool | None = None
    flip_prob: float | None = Field(None, ge=0, le=1)
    cutmix_prob: float | None = Field(None, ge=0, le=1)
    copy_paste_prob: float | None = Field(None, ge=0, le=1)
    multiscale: tuple[int, int] | None = None
    strong_aug_off_epochs: int | None = Field(None, ge=0, description="last N epochs without mosaic/mixup")


class OptimizerConfig(StrictModel):
    name: Literal["adamw", "sgd"] | None = None
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool | None = None
    scale_lr_by_batch: bool | None = Field(None, description="lr × total_batch / base_batch")
    base_batch: PositiveInt | None = None


class ScheduleConfig(StrictModel):
    name: Literal["flat_cosine", "cosine", "step", "constant"] | None = None
    warmup_iters: int | None = Field(None, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    flat_fraction: float | None = Field(None, ge=0, le=1, description="flat_cosine: fraction of epochs before decay")


class EMAConfig(StrictModel):
    enabled: bool = True
    kind: Literal["exp_momentum", "ramped"] | None = None
    momentum: float | None = Field(None, gt=0, lt=1)
    decay: float | None = Field(None, gt=0, lt=1)
    gamma: float | None = Field(None, gt=0)


class TrainLoopConfig(StrictModel):
    epochs: PositiveInt = 12
    batch_size: PositiveInt = Field(8, description="images per worker per step")
    max_steps_per_epoch: PositiveInt | None = Field(None, description="cap steps per epoch (smoke runs)")
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EMAConfig = EMAConfig()
    amp: Literal["off", "bf16", "fp16"] = "off"
    grad_clip: float | None = Field(None, gt=0)
    sync_bn: bool = False
    eval_interval: PositiveInt = 1
    seed: int = 0
    score_thr: float = Field(0.001, ge=0, le=1)
    nms_iou: float = Field(0.65, gt=0, le=1)
    max_det: PositiveInt = 100


class ScalingConfig(StrictModel):
    workers: PositiveInt = 1
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)


class CheckpointConfig(StrictModel):
    every: PositiveInt = Field(1, description="epochs between checkpoints")
    keep_last: PositiveInt = 2
    max_failures: int = Field(2, ge=-1, description="worker failures tolerated (-1: unlimited)")


class DistillConfig(StrictModel):
    """Knowledge distillation from a teacher checkpoint (YOLOv6 §2.4 self-distillation; generic KD
    for other families). The loss is the student family's ``distill_loss``."""

    teacher: str = Field(description="teacher checkpoint directory (a workflow fills it from `teacher: STEP`)")
    weight: float = Field(1.0, ge=0)
    temperature: float | None = Field(None, gt=0, description="KD temperature; default: the family's (YOLOv6 20, "
                                      "the generic logit KD of the other families 1)")
    decay: Literal["cosine", "none"] = "cosine"
    feature: bool = Field(False, description="add channel-wise feature distillation (YOLOv6)")


class TrainConfig(StrictModel):
    """Everything ``detflow train`` needs; also the unit a sweep trial and a workflow step run."""

    name: str = Field("train", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    model: ModelConfig
    data: DataConfig
    recipe: RecipeConfig = RecipeConfig()
    train: TrainLoopConfig = TrainLoopConfig()
    scaling: ScalingConfig = ScalingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    distill: DistillConfig | None = None
    storage: str = Field("", description="local dir or s3://bucket/prefix; default $DETFLOW_HOME/runs")
    experiment: str = "detflow"
