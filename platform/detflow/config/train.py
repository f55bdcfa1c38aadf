"""Typed training configuration (``detflow train CONFIG.yaml``).

Example (``workflows/configs/rtmdet_tiny_synth.yaml``)::

    kind: train
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

from typing import Literal, get_args

from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from .base import StrictModel, field_error
from .model import ModelConfig, model_config_class

__all__ = [
    "DatasetSplit", "DataConfig", "ModelConfig", "OptimizerConfig", "ScheduleConfig", "EMAConfig",
    "TrainLoopConfig", "ScalingConfig", "CheckpointConfig", "TrainConfig", "MosaicConfig",
    "MixUpConfig", "RecipeConfig", "DistillConfig", "RECIPE_NAMES", "RecipeName", "OptimizerName",
    "ScheduleName", "EMAKind", "model_config_class",
]


class DatasetSplit(StrictModel):
    """A COCO annotation file and its image directory (paths relative to the config file)."""

    annotations: str
    images: str


class DataConfig(StrictModel):
    format: Literal["coco", "yolo", "voc"] = Field(
        "coco", description="coco: annotations is a COCO JSON file. yolo: annotations is the data.yaml or "
        "classes.txt (or its folder), images the split's image folder (labels/ beside images/). voc: annotations "
        "is ImageSets/Main/<split>.txt (or the VOC root), images the JPEGImages folder. yolo and voc are converted "
        "to COCO once, cached by content under $DETFLOW_HOME/datasets (docs/own-data.md)")
    train: DatasetSplit
    val: DatasetSplit | None = None
    image_size: int = Field(640, ge=32, description="training input size S (mosaic canvas 2S)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    filter_empty: bool = True


class _MixingConfig(StrictModel):
    """What Mosaic and MixUp share: on/off, probability, and the Cached variant's image cache."""

    enabled: bool = True
    prob: float = Field(1.0, ge=0, le=1)
    cache: bool = True
    max_cached_images: PositiveInt = 40
    random_pop: bool = True


class MosaicConfig(_MixingConfig):
    """(Cached)Mosaic: 4 images on a 2×canvas. ``cache`` selects CachedMosaic (RTMDet §3.3)."""


class MixUpConfig(_MixingConfig):
    """(Cached)MixUp: blend with another (mosaic) image."""

    max_cached_images: PositiveInt = 20
    alpha: float | None = Field(None, gt=0, description="Beta(alpha, alpha) mixing ratio; None = 0.5/0.5")


RecipeName = Literal["rtmdet", "rtmdet_ins", "yolov6", "retinanet", "yolov3_asff", "plain"]
RECIPE_NAMES: tuple[str, ...] = get_args(RecipeName)
MULTISCALE_RECIPES = ("yolov3_asff", "plain")  # the recipes whose pipeline takes ``recipe.multiscale``
OptimizerName = Literal["adamw", "sgd", "repopt"]
ScheduleName = Literal["flat_cosine", "cosine", "step", "constant"]
EMAKind = Literal["exp_momentum", "ramped"]


class RecipeConfig(StrictModel):
    """A named data pipeline + optimiser + schedule; every field overrides the recipe's default.

    ``name``: ``rtmdet`` | ``rtmdet_ins`` (RTMDet's pipeline; RTMDet-Ins-x: lr 0.002 for 128 images)
    | ``yolov6`` | ``retinanet`` | ``yolov3_asff`` | ``plain`` (resize+flip only); left out, the
    model's own (``detmodels.get_model_entry(model).recipe``, filled in by :class:`TrainConfig`).
    Fields left ``None`` take the recipe's paper value for the model's size (``entry.size``).
    """

    name: RecipeName | None = Field(None, description="default: the model's recipe (yolov6_s: yolov6)")
    mosaic: MosaicConfig | None = None
    mixup: MixUpConfig | None = None
    ratio_range: tuple[float, float] | None = None
    hsv: bool | None = None
    flip_prob: float | None = Field(None, ge=0, le=1)
    cutmix_prob: float | None = Field(None, ge=0, le=1)
    copy_paste_prob: float | None = Field(None, ge=0, le=1)
    multiscale: tuple[int, int] | None = Field(None, description="(min, max) sizes; recipes yolov3_asff and plain")
    strong_aug_off_epochs: int | None = Field(None, ge=0, description="last N epochs without mosaic/mixup")

    @field_validator("ratio_range")
    @classmethod
    def _ratio_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError("0 < low <= high")
        return value

    @field_validator("multiscale")
    @classmethod
    def _multiscale(cls, value: tuple[int, int] | None, info: ValidationInfo) -> tuple[int, int] | None:
        if value is not None and not 32 <= value[0] <= value[1]:
            raise ValueError("32 <= min <= max")
        name = info.data.get("name")
        if value is not None and name is not None and name not in MULTISCALE_RECIPES:
            raise ValueError(_no_multiscale(name))
        return value


def _no_multiscale(recipe: str, model: str = "") -> str:
    """Why ``recipe.multiscale`` is refused with recipe ``recipe`` (``model``'s, when filled in from it)."""
    whose = f" (model {model}'s recipe)" if model else ""
    return f"null: only recipes {' and '.join(MULTISCALE_RECIPES)} use multi-scale sizes, not {recipe!r}{whose}"


class OptimizerConfig(StrictModel):
    """Overrides of the recipe's optimiser (``None``: the recipe's value for the model's size).

    ``name: repopt`` is SGD with RepOpt gradient masks (YOLOv6 quantization-friendly training,
    docs/yolov6-quantization.md): it needs ``repopt_scales``, the checkpoint of a hyper-search run of
    the same model, and a model built with ``backbone.block: repopt``.
    """

    name: OptimizerName | None = Field(None, description="adamw | sgd | repopt (SGD with RepOpt gradient "
                                       "masks; needs repopt_scales and model.backbone.block: repopt)")
    repopt_scales: str | None = Field(None, description="repopt: the detflow checkpoint directory of the "
                                      "hyper-search run (same model with backbone.block: hyper_search) whose "
                                      "trained branch scales initialise the kernels and set the gradient masks")
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool | None = None
    scale_lr_by_batch: bool | None = Field(None, description="lr × total_batch / base_batch")
    base_batch: PositiveInt | None = None


class ScheduleConfig(StrictModel):
    """Overrides of the recipe's per-iteration LR schedule (``None``: the recipe's value)."""

    name: ScheduleName | None = None
    warmup_iters: int | None = Field(None, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    warmup_start: float | None = Field(None, ge=0, le=1, description="LR factor at the first warm-up iteration")
    warmup_power: float | None = Field(None, ge=1, description="warm-up shape: progress^power (1 linear, 4 burn-in)")
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    flat_fraction: float | None = Field(None, ge=0, le=1, description="flat_cosine: fraction of epochs before decay")


class EMAConfig(StrictModel):
    """Overrides of the recipe's weight EMA (``None``: the recipe's value)."""

    enabled: bool | None = Field(None, description="default: the recipe's (off for retinanet, yolov3_asff)")
    kind: EMAKind | None = None
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
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="mixed precision of forward + loss: bf16 on "
                                                "CPU or GPU, fp16 on GPU only (with a GradScaler)")
    grad_clip: float | None = Field(None, gt=0)
    sync_bn: bool = False
    eval_interval: PositiveInt = 1
    seed: int = 0
    score_thr: float = Field(0.001, ge=0, le=1)
    nms_iou: float = Field(0.65, gt=0, le=1)
    max_det: PositiveInt = 100
    patience: PositiveInt | None = Field(None, description="early stopping: stop after this many epochs without "
                                         "improvement of the val primary metric (needs data.val)")
    min_delta: float = Field(0.0, ge=0, description="early stopping: smallest gain that counts as an improvement")


class ScalingConfig(StrictModel):
    workers: PositiveInt = 1
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    bucket_cap_mb: float = Field(25, gt=0, description="DDP gradient bucket size in MiB: gradients are all-reduced "
                                 "bucket by bucket while backward still runs")


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

    kind: Literal["train"] = Field("train", description="config kind: a train config file starts with `kind: train`")
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

    @model_validator(mode="after")
    def _patience_needs_val(self) -> TrainConfig:
        """``train.patience`` watches the validation metric: refused without ``data.val``."""
        if self.train.patience is not None and self.data.val is None:
            raise field_error("TrainConfig", ("train", "patience"), self.train.patience,
                              "null (early stopping watches the val metric: add data.val or remove train.patience)")
        return self

    @model_validator(mode="after")
    def _repopt(self) -> TrainConfig:
        """``train.optimizer.name: repopt`` and ``train.optimizer.repopt_scales`` go together, and the
        model must be built with RepOpt blocks (``model.backbone.block: repopt``)."""
        opt = self.train.optimizer
        if opt.name == "repopt" and not opt.repopt_scales:
            raise field_error("TrainConfig", ("train", "optimizer", "repopt_scales"), opt.repopt_scales,
                              "the checkpoint directory of a hyper-search run (train.optimizer.name is repopt)")
        if opt.repopt_scales and opt.name != "repopt":
            raise field_error("TrainConfig", ("train", "optimizer", "name"), opt.name,
                              "'repopt' (train.optimizer.repopt_scales is set)")
        block = getattr(getattr(self.model, "backbone", None), "block", None)
        if opt.name == "repopt" and block != "repopt":
            raise field_error("TrainConfig", ("model", "backbone", "block"), block,
                              f"'repopt' (train.optimizer.name is repopt; {self.model.name} has no such option)"
                              if block is None else "'repopt' (train.optimizer.name is repopt)")
        return self

    @model_validator(mode="after")
    def _fp16_needs_gpu(self) -> TrainConfig:
        """``train.amp: fp16`` autocasts on CUDA only: refused for CPU workers (``scaling.gpus_per_worker: 0``)."""
        if self.train.amp == "fp16" and self.scaling.gpus_per_worker == 0:
            raise field_error("TrainConfig", ("train", "amp"), self.train.amp,
                              "'off' or 'bf16' (fp16 mixed precision needs a GPU: scaling.gpus_per_worker is 0; "
                              "bf16 autocasts on CPU)")
        return self

    @model_validator(mode="after")
    def _model_recipe(self) -> TrainConfig:
        """``recipe.name`` left out: the model entry's recipe (a yolov6_s run trains with YOLOv6's).

        The filled name is not marked as set, so composing this config with another model picks
        that model's recipe; a stored ``config.yaml`` shows it.
        """
        if self.recipe.name is None:
            import detmodels

            name = detmodels.get_model_entry(self.model.name).recipe
            if self.recipe.multiscale is not None and name not in MULTISCALE_RECIPES:
                raise field_error("TrainConfig", ("recipe", "multiscale"), list(self.recipe.multiscale),
                                  _no_multiscale(name, self.model.name))
            recipe = RecipeConfig.model_construct(self.recipe.model_fields_set,
                                                  **{**dict(self.recipe), "name": name})
            object.__setattr__(self, "recipe", recipe)  # frozen model: filled once, during validation
        return self
