"""Training recipes: a named, typed set of defaults — augmentation pipeline per stage, optimizer,
LR schedule, EMA — taken from each paper's released configs (reference fact sheet §2.7, §3.4,
§4.5, §5.3), every value overridable through :class:`detflow.config.train.RecipeConfig`.

Recipes:
    ``rtmdet``      RTMDet §3.3: CachedMosaic → LSJ RandomResize → RandomCrop → YOLOX HSV → flip →
                    pad → CachedMixUp; the last epochs switch to the plain LSJ pipeline.
    ``yolov6``      YOLOv6 v3.0: Mosaic → RandomAffine (translate, scale) → MixUp → HSV gains →
                    flip; mosaic/mixup off for the last epochs.
    ``retinanet``   SpineNet/RetinaNet: flip + scale jitter [0.5, 2.0], crop/pad to the input size.
    ``yolov3_asff`` YOLOv3+ASFF: MixUp Beta(1.5, 1.5), multi-scale letterbox sizes; mixup off for
                    the last epochs, then a fixed size.
    ``plain``       letterbox + flip only.

Stage switches. A paper's "last N of E epochs" becomes, for a run of ``epochs``,
``n = clamp(round(epochs × N / E), 1, epochs − 1)`` (``0`` for a 1-epoch run): RTMDet's last 20 of
300 is the last 2 of 30 epochs. ``recipe.strong_aug_off_epochs`` sets ``n`` directly.
:attr:`Recipe.switch_epoch` is the first (0-based) epoch of stage 2 (``epochs`` when none).

The train config's ``image_size`` S replaces the papers' 640: mosaic tiles are S (canvas 2S),
the LSJ scale 2S, crops/pads S, affine output S.

Example::

    recipe = build_recipe(RecipeConfig(name="rtmdet"), model_name="rtmdet_tiny", image_size=320,
                          epochs=30, input_spec=model.input_spec)
    dataset.set_transforms(recipe.train_transforms(epoch, dataset=dataset))
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.train import EMAConfig, MixUpConfig, MosaicConfig, OptimizerConfig, RecipeConfig, ScheduleConfig
from ..errors import ConfigError
from .geometric import (
    FilterAnnotations, HSVRandomAug, MultiScaleResize, RandomAffine, RandomResizeCrop,
    YOLOXHSVRandomAug, seed_transforms,
)
from .mixing import CachedMixUp, CachedMosaic, CopyPaste, CutMix, MixUp, Mosaic
from .transforms import Compose, LetterboxResize, PackDetInputs, Pad, RandomFlip

__all__ = [
    "Recipe", "OptimizerSpec", "ScheduleSpec", "EMASpec", "AugmentSpec", "build_recipe",
    "scaled_last_epochs", "RECIPE_NAMES",
]

RECIPE_NAMES = ("rtmdet", "yolov6", "retinanet", "yolov3_asff", "plain")


# --------------------------------------------------------------------------- typed defaults
@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer defaults; ``lr`` is for ``base_batch`` images when ``scale_lr_by_batch``."""

    name: str
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    base_batch: int
    scale_lr_by_batch: bool

    def merged(self, cfg: OptimizerConfig | None) -> OptimizerSpec:
        """This spec with the non-``None`` fields of ``train.optimizer`` applied."""
        return _merged(self, cfg)


@dataclass(frozen=True)
class ScheduleSpec:
    """LR schedule defaults. ``milestones`` (step schedule): fractions of the run where lr ×0.1."""

    name: str
    warmup_iters: int
    warmup_epochs: float
    min_lr_ratio: float
    flat_fraction: float
    milestones: tuple[float, ...] = ()

    def merged(self, cfg: ScheduleConfig | None) -> ScheduleSpec:
        return _merged(self, cfg)


@dataclass(frozen=True)
class EMASpec:
    """EMA defaults: ``exp_momentum`` (RTMDet ExpMomentumEMA: momentum, gamma) or ``ramped``
    (YOLOv6: decay·(1 − e^(−updates/gamma)))."""

    enabled: bool
    kind: str
    momentum: float = 0.0002
    decay: float = 0.9999
    gamma: float = 2000.0

    def merged(self, cfg: EMAConfig | None) -> EMASpec:
        return _merged(self, cfg)


def _merged(spec: Any, cfg: Any) -> Any:
    if cfg is None:
        return spec
    names = {f.name for f in dataclasses.fields(spec)}
    updates = {k: v for k, v in cfg.model_dump().items() if k in names and v is not None}
    if "enabled" in names and "enabled" not in cfg.model_fields_set:
        updates.pop("enabled", None)
    return dataclasses.replace(spec, **updates)


@dataclass(frozen=True)
class AugmentSpec:
    """The resolved augmentation knobs of a recipe (defaults + RecipeConfig overrides)."""

    layout: str                      # lsj | affine | multiscale | letterbox
    mosaic: MosaicConfig
    mixup: MixUpConfig
    ratio_range: tuple[float, float]
    hsv: str | None                  # yolox | gain | None
    flip_prob: float
    cutmix_prob: float
    copy_paste_prob: float
    multiscale: tuple[int, int] | None
    affine_scale: float = 0.5
    affine_translate: float = 0.1
    pad_val: int = 114


@dataclass(frozen=True)
class Stage:
    """Epochs ``[start, …)`` use this stage: ``strong`` = mosaic/mixup/cutmix/copy-paste on;
    ``multiscale`` = random sizes (yolov3_asff)."""

    name: str
    start: int
    strong: bool = True
    multiscale: bool = True


def scaled_last_epochs(epochs: int, paper_last: int, paper_epochs: int = 300) -> int:
    """The paper's "last ``paper_last`` of ``paper_epochs``" for a run of ``epochs``:
    ``clamp(round(epochs · paper_last / paper_epochs), 1, epochs − 1)``, 0 when ``epochs < 2``."""
    if epochs < 2:
        return 0
    return min(max(1, round(epochs * paper_last / paper_epochs)), epochs - 1)


# --------------------------------------------------------------------------- the Recipe
@dataclass
class Recipe:
    """A resolved recipe for one run. Pipelines are built once per stage and reused, so the
    caches of CachedMosaic / CachedMixUp persist across epochs."""

    name: str
    model_name: str
    image_size: int
    epochs: int
    augment: AugmentSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    ema: EMASpec
    stages: list[Stage]
    input_spec: Any = None
    with_masks: bool = False
    batch_size: int = 1
    seed: int = 0
    _built: dict[str, Compose] = field(default_factory=dict, repr=False)

    @property
    def switch_epoch(self) -> int:
        """First epoch (0-based) of stage 2, ``epochs`` when the recipe never switches."""
        return self.stages[1].start if len(self.stages) > 1 else self.epochs

    def stage_for(self, epoch: int) -> Stage:
        current = self.stages[0]
        for stage in self.stages:
            if epoch >= stage.start:
                current = stage
        return current

    def train_transforms(self, epoch: int, *, dataset: Any = None) -> Compose:
        """The pipeline for ``epoch`` (the same object for every epoch of a stage); mixing
        transforms are attached to ``dataset`` when given. Ends in PackDetInputs when the recipe
        has an ``input_spec``."""
        stage = self.stage_for(epoch)
        if stage.name not in self._built:
            steps = build_pipeline(self.augment, image_size=self.image_size, strong=stage.strong,
                                   multiscale=stage.multiscale, with_masks=self.with_masks,
                                   batch_size=self.batch_size)
            if self.input_spec is not None:
                steps.append(PackDetInputs(self.input_spec))
            pipeline = Compose(steps)
            seed_transforms(pipeline, self.seed * 1000 + len(self._built) * 100)
            self._built[stage.name] = pipeline
        pipeline = self._built[stage.name]
        if dataset is not None:
            for t in pipeline.transforms:
                if hasattr(t, "attach"):
                    t.attach(dataset)
        return pipeline

    def describe(self) -> dict[str, Any]:
        """Flat summary for logging (MLflow params): switch epoch, stages, resolved knobs."""
        a = self.augment
        return {
            "recipe": self.name, "recipe.switch_epoch": self.switch_epoch,
            "recipe.stages": ",".join(f"{s.name}@{s.start}" for s in self.stages),
            "recipe.layout": a.layout, "recipe.ratio_range": list(a.ratio_range),
            "recipe.mosaic": _mixing_summary(a.mosaic), "recipe.mixup": _mixing_summary(a.mixup),
            "recipe.hsv": a.hsv or "off", "recipe.flip_prob": a.flip_prob,
            "recipe.cutmix_prob": a.cutmix_prob, "recipe.copy_paste_prob": a.copy_paste_prob,
            "recipe.multiscale": list(a.multiscale) if a.multiscale else None,
            **{f"recipe.{part}.{k}": v for part in ("optimizer", "schedule", "ema")
               for k, v in dataclasses.asdict(getattr(self, part)).items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Cache states of the built pipelines' cached transforms: {stage: {step index: state}}."""
        return {name: {i: t.state_dict() for i, t in enumerate(p.transforms) if hasattr(t, "state_dict")}
                for name, p in self._built.items()}

    def load_state_dict(self, state: dict[str, Any], *, dataset: Any) -> None:
        """Rebuild each stage's pipeline and refill its caches (re-reading images from ``dataset``)."""
        for stage in self.stages:
            if stage.name in state:
                pipeline = self.train_transforms(stage.start, dataset=dataset)
                for i, sub in state[stage.name].items():
                    pipeline.transforms[int(i)].load_state_dict(sub)


def _mixing_summary(cfg: MosaicConfig | MixUpConfig) -> str:
    if not cfg.enabled or cfg.prob == 0:
        return "off"
    kind = f"cached({cfg.max_cached_images},{'random' if cfg.random_pop else 'fifo'})" if cfg.cache else "uncached"
    return f"p={cfg.prob},{kind}"


# --------------------------------------------------------------------------- pipeline builder
def build_pipeline(a: AugmentSpec, *, image_size: int, strong: bool, multiscale: bool,
                   with_masks: bool, batch_size: int = 1) -> list[Callable]:
    """The transform list (without PackDetInputs) of one stage."""
    s = image_size
    mosaic = strong and a.mosaic.enabled and a.mosaic.prob > 0
    steps: list[Callable] = []
    if mosaic:
        # YOLOv6 letterboxes the images it does not mosaic; RTMDet's LSJ takes any size
        fallback = LetterboxResize(s, pad_value=a.pad_val) if a.layout == "affine" else None
        steps.append(_mosaic(a, s, fallback))
    steps += _geometry(a, s, mosaic=mosaic, multiscale=multiscale, with_masks=with_masks,
                       batch_size=batch_size)
    if a.hsv == "yolox":
        steps.append(YOLOXHSVRandomAug())
    elif a.hsv == "gain":
        steps.append(HSVRandomAug())
    if a.flip_prob > 0:
        steps.append(RandomFlip(a.flip_prob))
    if a.layout in ("lsj", "letterbox"):
        steps.append(Pad(s, value=a.pad_val))
    if strong and a.mixup.enabled and a.mixup.prob > 0:
        steps.append(_mixup(a, s))
    if strong and a.cutmix_prob > 0:
        steps.append(CutMix(a.cutmix_prob, pad_val=a.pad_val))
    if strong and a.copy_paste_prob > 0:
        occluded = max(1, round(300 * (s / 640) ** 2))  # MMDetection's 300 px at 640, scaled by area
        steps.append(CopyPaste(a.copy_paste_prob, pad_val=a.pad_val, mask_occluded_thr=occluded))
    steps.append(FilterAnnotations((1, 1)))
    return steps


def _mosaic(a: AugmentSpec, s: int, fallback: Callable | None) -> Mosaic:
    m = a.mosaic
    if m.cache:
        return CachedMosaic(s, max_cached_images=m.max_cached_images, random_pop=m.random_pop, prob=m.prob,
                            pad_val=a.pad_val, fallback=fallback)
    return Mosaic(s, prob=m.prob, pad_val=a.pad_val, fallback=fallback)


def _mixup(a: AugmentSpec, s: int) -> MixUp:
    m = a.mixup
    if m.cache:
        return CachedMixUp(s, max_cached_images=m.max_cached_images, random_pop=m.random_pop, prob=m.prob,
                           alpha=m.alpha, pad_val=a.pad_val)
    return MixUp(s, ratio_range=(1.0, 1.0), prob=m.prob, alpha=m.alpha, pad_val=a.pad_val)


def _geometry(a: AugmentSpec, s: int, *, mosaic: bool, multiscale: bool, with_masks: bool,
              batch_size: int) -> list[Callable]:
    canvas = 2 * s if mosaic else s
    if a.layout == "lsj":
        return [RandomResizeCrop(canvas, a.ratio_range, s, recompute_bbox=True, allow_negative_crop=with_masks)]
    if a.layout == "affine":
        pre = [] if mosaic else [LetterboxResize(s, pad_value=a.pad_val)]
        return pre + [RandomAffine(s, translate=a.affine_translate, scale=a.affine_scale,
                                   border_value=a.pad_val)]
    if a.layout == "multiscale" and multiscale and a.multiscale:
        lo, hi = a.multiscale
        sizes = list(range(lo, hi + 1, 32)) or [s]
        return [MultiScaleResize(sizes, interval=10 * batch_size)]
    return [LetterboxResize(s, pad_value=a.pad_val)]


# --------------------------------------------------------------------------- recipe defaults
_RTMDET_SIZE = re.compile(r"_(tiny|s|m|l|x)$")
_YOLOV6_SIZE = re.compile(r"_?(n|s|m|l)6?$")


def _size_of(model_name: str, pattern: re.Pattern[str], default: str) -> str:
    match = pattern.search(model_name)
    return match.group(1) if match else default


def _rtmdet(model_name: str, s: int) -> dict[str, Any]:
    size = _size_of(model_name, _RTMDET_SIZE, "s")
    tiny = size == "tiny"
    ins_x = model_name.startswith("rtmdet_ins") and size == "x"
    return dict(
        augment=dict(layout="lsj", ratio_range=(0.5, 2.0) if size in ("tiny", "s") else (0.1, 2.0), hsv="yolox",
                     mosaic=MosaicConfig(max_cached_images=20 if tiny else 40, random_pop=not tiny),
                     mixup=MixUpConfig(max_cached_images=10 if tiny else 20, random_pop=not tiny,
                                       prob=0.5 if tiny else 1.0)),
        optimizer=OptimizerSpec("adamw", 0.002 if ins_x else 0.004, 0.05, 0.9, False, 128 if ins_x else 256, True),
        schedule=ScheduleSpec("flat_cosine", 1000, 0.0, 0.05, 0.5),
        ema=EMASpec(True, "exp_momentum", momentum=0.0002, gamma=2000.0),
        strong_off=20, paper_epochs=300,
    )


def _yolov6(model_name: str, s: int) -> dict[str, Any]:
    size = _size_of(model_name, _YOLOV6_SIZE, "s")
    p6 = model_name.endswith("6")
    mixup_prob = 0.0 if size in ("n", "s") else (0.2 if p6 and size == "l" else 0.1)
    return dict(
        augment=dict(layout="affine", ratio_range=(1.0, 1.0), hsv="gain",
                     affine_scale=0.5 if size in ("n", "s") else 0.9,
                     mosaic=MosaicConfig(cache=False),
                     mixup=MixUpConfig(enabled=mixup_prob > 0, prob=mixup_prob, cache=False, alpha=32.0)),
        optimizer=OptimizerSpec("sgd", 0.02 if size == "n" else 0.01, 5e-4, 0.937, True, 256, True),
        schedule=ScheduleSpec("cosine", 1000, 3.0, 0.01, 0.0),
        ema=EMASpec(True, "ramped", decay=0.9999, gamma=2000.0),
        strong_off=15, paper_epochs=300,
    )


def _retinanet(model_name: str, s: int) -> dict[str, Any]:
    return dict(
        augment=dict(layout="lsj", ratio_range=(0.5, 2.0), hsv=None, pad_val=0,
                     mosaic=MosaicConfig(enabled=False), mixup=MixUpConfig(enabled=False)),
        optimizer=OptimizerSpec("sgd", 0.28, 4e-5, 0.9, False, 256, True),
        schedule=ScheduleSpec("step", 2000, 0.0, 0.01, 0.0, milestones=(0.95, 0.98)),
        ema=EMASpec(False, "exp_momentum"),
        strong_off=0, paper_epochs=500,
    )


def _yolov3_asff(model_name: str, s: int) -> dict[str, Any]:
    lo = max(32, int(round(s * 320 / 608 / 32)) * 32)
    return dict(
        augment=dict(layout="multiscale", ratio_range=(1.0, 1.0), hsv="yolox", multiscale=(lo, s),
                     mosaic=MosaicConfig(enabled=False), mixup=MixUpConfig(cache=False, alpha=1.5)),
        optimizer=OptimizerSpec("sgd", 0.001, 5e-4, 0.9, False, 64, False),
        schedule=ScheduleSpec("cosine", 0, 5.0, 0.01, 20 / 300),
        ema=EMASpec(False, "exp_momentum"),
        strong_off=30, fixed_size_off=10, paper_epochs=300,
    )


def _plain(model_name: str, s: int) -> dict[str, Any]:
    return dict(
        augment=dict(layout="letterbox", ratio_range=(1.0, 1.0), hsv=None,
                     mosaic=MosaicConfig(enabled=False), mixup=MixUpConfig(enabled=False)),
        optimizer=OptimizerSpec("adamw", 0.001, 0.05, 0.9, False, 64, True),
        schedule=ScheduleSpec("cosine", 200, 1.0, 0.05, 0.0),
        ema=EMASpec(True, "exp_momentum", momentum=0.0002, gamma=2000.0),
        strong_off=0, paper_epochs=300,
    )


_DEFAULTS: dict[str, Callable[[str, int], dict[str, Any]]] = {
    "rtmdet": _rtmdet, "yolov6": _yolov6, "retinanet": _retinanet, "yolov3_asff": _yolov3_asff, "plain": _plain,
}


def _override(default: Any, override: Any) -> Any:
    """``default`` (a pydantic config) with the fields explicitly set in ``override``."""
    if override is None:
        return default
    return default.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


def _resolve_augment(cfg: RecipeConfig, d: dict[str, Any]) -> AugmentSpec:
    mosaic = _override(d.pop("mosaic"), cfg.mosaic)
    mixup = _override(d.pop("mixup"), cfg.mixup)
    values = {"flip_prob": 0.5, "cutmix_prob": 0.0, "copy_paste_prob": 0.0, "multiscale": None, **d}
    for key in ("ratio_range", "flip_prob", "cutmix_prob", "copy_paste_prob", "multiscale"):
        if getattr(cfg, key) is not None:
            values[key] = tuple(getattr(cfg, key)) if key in ("ratio_range", "multiscale") else getattr(cfg, key)
    if cfg.hsv is not None:
        values["hsv"] = (values["hsv"] or "yolox") if cfg.hsv else None
    _check(cfg, values)
    return AugmentSpec(mosaic=mosaic, mixup=mixup, **values)


def _check(cfg: RecipeConfig, values: dict[str, Any]) -> None:
    lo, hi = values["ratio_range"]
    if not 0 < lo <= hi:
        raise ConfigError([f"recipe.ratio_range: expected 0 < low <= high, got {list(values['ratio_range'])}"])
    if cfg.multiscale is not None:
        if values["layout"] not in ("multiscale", "letterbox"):
            raise ConfigError([f"recipe.multiscale: only used by recipes yolov3_asff and plain, not {cfg.name!r}"])
        a, b = cfg.multiscale
        if not (32 <= a <= b):
            raise ConfigError([f"recipe.multiscale: expected 32 <= min <= max, got {list(cfg.multiscale)}"])
        values["layout"] = "multiscale"


def _stages(d: dict[str, Any], cfg: RecipeConfig, epochs: int) -> list[Stage]:
    """Stage boundaries: strong augmentation off for the last ``off`` epochs, multi-scale off for
    the last ``fixed`` epochs (yolov3_asff)."""
    paper = d["paper_epochs"]
    if cfg.strong_aug_off_epochs is not None:
        off = min(cfg.strong_aug_off_epochs, epochs)
    else:
        off = scaled_last_epochs(epochs, d["strong_off"], paper) if d["strong_off"] else 0
    fixed = scaled_last_epochs(epochs, d["fixed_size_off"], paper) if d.get("fixed_size_off") else 0
    cuts = sorted({0} | {epochs - n for n in (off, fixed) if n > 0})
    return [Stage(f"stage{i + 1}", c, strong=not (off and c >= epochs - off),
                  multiscale=not (fixed and c >= epochs - fixed)) for i, c in enumerate(cuts)]


def build_recipe(cfg: RecipeConfig, *, model_name: str, image_size: int, epochs: int,
                 input_spec: Any = None, with_masks: bool = False, batch_size: int = 1,
                 seed: int = 0) -> Recipe:
    """Resolve ``cfg`` (paper defaults for ``cfg.name`` and the model's size + overrides).

    ``input_spec`` (detmodels.InputSpec): append PackDetInputs. ``with_masks``: instance masks are
    loaded (RandomCrop keeps negative crops, as RTMDet-Ins). ``batch_size`` (per worker): the
    multi-scale size changes every 10 batches. ``seed``: base seed of the transforms' generators.
    """
    if epochs < 1 or image_size < 32:
        raise ConfigError([f"build_recipe: expected epochs >= 1 and image_size >= 32, got {epochs}, {image_size}"])
    d = _DEFAULTS[cfg.name](model_name, image_size)
    augment = _resolve_augment(cfg, dict(d["augment"]))
    return Recipe(name=cfg.name, model_name=model_name, image_size=image_size, epochs=epochs, augment=augment,
                  optimizer=d["optimizer"], schedule=d["schedule"], ema=d["ema"],
                  stages=_stages(d, cfg, epochs), input_spec=input_spec, with_masks=with_masks,
                  batch_size=batch_size, seed=seed)
