"""Augmentation recipes: each paper's training pipeline per stage, as a table keyed by (recipe, size),
taken from the papers' released configs (reference fact sheet §2.7, §3.4, §4.5, §5.3); every
value overridable through :class:`detflow.config.train.RecipeConfig`. (The optimiser, schedule and
EMA half of a recipe is :mod:`detflow.engine.recipes`.)

Recipes:
    ``rtmdet``      RTMDet §3.3: CachedMosaic → LSJ RandomResize → RandomCrop → YOLOX HSV → flip →
                    pad → CachedMixUp; the last epochs switch to the plain LSJ pipeline.
    ``rtmdet_ins``  RTMDet-Ins: the same pipeline (negative crops kept when masks are loaded).
    ``yolov6``      YOLOv6 v3.0: Mosaic → RandomAffine (translate, scale) → MixUp → HSV gains →
                    flip; mosaic/mixup off for the last epochs.
    ``retinanet``   SpineNet/RetinaNet: flip + scale jitter [0.5, 2.0], crop/pad to the input size.
    ``yolov3_asff`` YOLOv3+ASFF: MixUp Beta(1.5, 1.5), multi-scale letterbox sizes; mixup off for
                    the last epochs, then a fixed size.
    ``plain``       letterbox + flip only.

Sizes are ``detmodels.get_model_entry(name).size``; a size without its own row (a recipe used
with another family's model) takes the recipe's ``any`` row (RTMDet's and YOLOv6's ``s``).

Stage switches. A paper's "last N of E epochs" becomes, for a run of ``epochs``,
``n = clamp(round(epochs × N / E), 1, epochs − 1)`` (``0`` for a 1-epoch run): RTMDet's last 20 of
300 is the last 2 of 30 epochs. ``recipe.strong_aug_off_epochs`` sets ``n`` directly.
:attr:`Augmentation.switch_epoch` is the first (0-based) epoch of stage 2 (``epochs`` when none).

The train config's ``image_size`` S replaces the papers' 640: mosaic tiles are S (canvas 2S),
the LSJ scale 2S, crops/pads S, affine output S.

Example::

    aug = build_augmentation(RecipeConfig(name="rtmdet"), size="tiny", image_size=320, epochs=30,
                             input_spec=model.input_spec)
    dataset.set_transforms(aug.train_transforms(epoch, dataset=dataset))
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from ..config.train import MixUpConfig, MosaicConfig, RecipeConfig
from ..errors import ConfigError
from .geometric import (
    FilterAnnotations, HSVRandomAug, MultiScaleResize, RandomAffine, RandomResizeCrop,
    YOLOXHSVRandomAug, seed_transforms,
)
from .mixing import CachedMixUp, CachedMosaic, CopyPaste, CutMix, MixUp, Mosaic
from .transforms import Compose, LetterboxResize, PackDetInputs, Pad, RandomFlip

__all__ = [
    "AugmentSpec", "AugmentRecipe", "AUGMENT_RECIPES", "augment_recipe", "recipe_row", "Stage",
    "Augmentation", "build_augmentation", "build_pipeline", "scaled_last_epochs",
]

ANY_SIZE = "any"
R = TypeVar("R")


# --------------------------------------------------------------------------- typed rows
@dataclass(frozen=True, kw_only=True)
class AugmentSpec:
    """The augmentation knobs of one run (a recipe row, then with the RecipeConfig overrides)."""

    layout: Literal["lsj", "affine", "multiscale", "letterbox"]
    mosaic: MosaicConfig
    mixup: MixUpConfig
    ratio_range: tuple[float, float]
    hsv: Literal["yolox", "gain"] | None
    flip_prob: float = 0.5
    cutmix_prob: float = 0.0
    copy_paste_prob: float = 0.0
    multiscale: tuple[int, int] | None = None
    affine_scale: float = 0.5
    affine_translate: float = 0.1
    pad_val: int = 114


@dataclass(frozen=True, kw_only=True)
class AugmentRecipe:
    """One (recipe, size) row: the paper's augmentation and its stage switches.

    ``strong_off``: the paper's last N of ``paper_epochs`` epochs without mosaic/mixup;
    ``fixed_size_off``: its last N epochs at a fixed size (yolov3_asff); ``multiscale_of`` (lo, hi):
    multi-scale sizes from S·lo/hi (multiple of 32) to S (YOLOv3-ASFF trains 320–608).
    """

    augment: AugmentSpec
    strong_off: int
    fixed_size_off: int = 0
    paper_epochs: int = 300
    multiscale_of: tuple[int, int] | None = None


_RTMDET_S = AugmentRecipe(
    augment=AugmentSpec(layout="lsj", ratio_range=(0.5, 2.0), hsv="yolox",
                        mosaic=MosaicConfig(max_cached_images=40, random_pop=True),
                        mixup=MixUpConfig(max_cached_images=20, random_pop=True, prob=1.0)),
    strong_off=20)
_RTMDET_TINY = replace(_RTMDET_S, augment=replace(
    _RTMDET_S.augment, mosaic=MosaicConfig(max_cached_images=20, random_pop=False),
    mixup=MixUpConfig(max_cached_images=10, random_pop=False, prob=0.5)))
_RTMDET_LARGE = replace(_RTMDET_S, augment=replace(_RTMDET_S.augment, ratio_range=(0.1, 2.0)))

_YOLOV6_S = AugmentRecipe(
    augment=AugmentSpec(layout="affine", ratio_range=(1.0, 1.0), hsv="gain", affine_scale=0.5,
                        mosaic=MosaicConfig(cache=False),
                        mixup=MixUpConfig(enabled=False, prob=0.0, cache=False, alpha=32.0)),
    strong_off=15)


def _yolov6_mixup(prob: float) -> AugmentRecipe:
    """YOLOv6 m/l (and P6): scale 0.9 and MixUp with probability ``prob``."""
    mixup = MixUpConfig(enabled=True, prob=prob, cache=False, alpha=32.0)
    return replace(_YOLOV6_S, augment=replace(_YOLOV6_S.augment, affine_scale=0.9, mixup=mixup))


_RETINANET = AugmentRecipe(
    augment=AugmentSpec(layout="lsj", ratio_range=(0.5, 2.0), hsv=None, pad_val=0,
                        mosaic=MosaicConfig(enabled=False), mixup=MixUpConfig(enabled=False)),
    strong_off=0, paper_epochs=500)

_YOLOV3_ASFF = AugmentRecipe(
    augment=AugmentSpec(layout="multiscale", ratio_range=(1.0, 1.0), hsv="yolox",
                        mosaic=MosaicConfig(enabled=False), mixup=MixUpConfig(cache=False, alpha=1.5)),
    strong_off=30, fixed_size_off=10, multiscale_of=(320, 608))

_PLAIN = AugmentRecipe(
    augment=AugmentSpec(layout="letterbox", ratio_range=(1.0, 1.0), hsv=None,
                        mosaic=MosaicConfig(enabled=False), mixup=MixUpConfig(enabled=False)),
    strong_off=0)

_RTMDET_ROWS = {"tiny": _RTMDET_TINY, "s": _RTMDET_S, ANY_SIZE: _RTMDET_S,
                "m": _RTMDET_LARGE, "l": _RTMDET_LARGE, "x": _RTMDET_LARGE}

AUGMENT_RECIPES: dict[tuple[str, str], AugmentRecipe] = {
    **{("rtmdet", size): row for size, row in _RTMDET_ROWS.items()},
    **{("rtmdet_ins", size): row for size, row in _RTMDET_ROWS.items()},
    ("yolov6", "n"): _YOLOV6_S, ("yolov6", "s"): _YOLOV6_S, ("yolov6", ANY_SIZE): _YOLOV6_S,
    ("yolov6", "n6"): _YOLOV6_S, ("yolov6", "s6"): _YOLOV6_S,
    ("yolov6", "m"): _yolov6_mixup(0.1), ("yolov6", "l"): _yolov6_mixup(0.1),
    ("yolov6", "m6"): _yolov6_mixup(0.1), ("yolov6", "l6"): _yolov6_mixup(0.2),
    ("retinanet", ANY_SIZE): _RETINANET,
    ("yolov3_asff", ANY_SIZE): _YOLOV3_ASFF,
    ("plain", ANY_SIZE): _PLAIN,
}


def recipe_row(table: Mapping[tuple[str, str], R], name: str, size: str, what: str) -> R:
    """The row of recipe ``name`` for model size ``size`` in ``table`` (its ``any`` row when it has
    none); a name without rows is a ConfigError ("no ``what`` ``name``")."""
    row = table.get((name, size)) or table.get((name, ANY_SIZE))
    if row is None:
        raise ConfigError([f"recipe.name: no {what} {name!r}"])
    return row


def augment_recipe(name: str, size: str) -> AugmentRecipe:
    """The row of recipe ``name`` for model size ``size`` (its ``any`` row when it has none)."""
    return recipe_row(AUGMENT_RECIPES, name, size, "augmentation recipe")


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


# --------------------------------------------------------------------------- the run's augmentation
@dataclass
class Augmentation:
    """The resolved augmentation of one run. Pipelines are built once per stage and reused, so the
    caches of CachedMosaic / CachedMixUp persist across epochs."""

    spec: AugmentSpec
    stages: list[Stage]
    image_size: int
    epochs: int
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
        transforms are attached to ``dataset`` when given. Ends in PackDetInputs when there is an
        ``input_spec``, with uint8 images: the training loop normalises the batch on its device
        (:func:`detflow.data.transforms.normalize_images`)."""
        stage = self.stage_for(epoch)
        if stage.name not in self._built:
            steps = build_pipeline(self.spec, image_size=self.image_size, strong=stage.strong,
                                   multiscale=stage.multiscale, with_masks=self.with_masks,
                                   batch_size=self.batch_size)
            if self.input_spec is not None:
                steps.append(PackDetInputs(self.input_spec, normalize=False))
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
        """Flat summary for logging: switch epoch, stages, resolved knobs (``recipe.*`` keys)."""
        a = self.spec
        return {
            "recipe.switch_epoch": self.switch_epoch,
            "recipe.stages": ",".join(f"{s.name}@{s.start}" for s in self.stages),
            "recipe.layout": a.layout, "recipe.ratio_range": list(a.ratio_range),
            "recipe.mosaic": _mixing_summary(a.mosaic), "recipe.mixup": _mixing_summary(a.mixup),
            "recipe.hsv": a.hsv or "off", "recipe.flip_prob": a.flip_prob,
            "recipe.cutmix_prob": a.cutmix_prob, "recipe.copy_paste_prob": a.copy_paste_prob,
            "recipe.multiscale": list(a.multiscale) if a.multiscale else None,
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
        # LSJ: the crop that follows renders its window straight from the mosaic's tiles (masks: drawn)
        steps.append(_mosaic(a, s, fallback, lazy=a.layout == "lsj" and not with_masks))
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


def _mosaic(a: AugmentSpec, s: int, fallback: Callable | None, *, lazy: bool) -> Mosaic:
    m = a.mosaic
    if m.cache:
        return CachedMosaic(s, max_cached_images=m.max_cached_images, random_pop=m.random_pop, prob=m.prob,
                            pad_val=a.pad_val, fallback=fallback, lazy=lazy)
    return Mosaic(s, prob=m.prob, pad_val=a.pad_val, fallback=fallback, lazy=lazy)


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


# --------------------------------------------------------------------------- resolution
def _override(default: Any, override: Any) -> Any:
    """``default`` (a pydantic config) with the fields explicitly set in ``override``."""
    if override is None:
        return default
    return default.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


def _resolve_spec(cfg: RecipeConfig, row: AugmentRecipe, image_size: int) -> AugmentSpec:
    """The row's AugmentSpec with ``cfg``'s overrides (validated by RecipeConfig: ratio range,
    multi-scale sizes only for the recipes that use them)."""
    a = row.augment
    updates: dict[str, Any] = {"mosaic": _override(a.mosaic, cfg.mosaic), "mixup": _override(a.mixup, cfg.mixup)}
    if row.multiscale_of is not None:
        lo, hi = row.multiscale_of
        updates["multiscale"] = (max(32, int(round(image_size * lo / hi / 32)) * 32), image_size)
    for key in ("ratio_range", "multiscale"):
        if getattr(cfg, key) is not None:
            updates[key] = tuple(getattr(cfg, key))
    for key in ("flip_prob", "cutmix_prob", "copy_paste_prob"):
        if getattr(cfg, key) is not None:
            updates[key] = getattr(cfg, key)
    if cfg.hsv is not None:
        updates["hsv"] = (a.hsv or "yolox") if cfg.hsv else None
    if cfg.multiscale is not None:
        updates["layout"] = "multiscale"
    return replace(a, **updates)


def _stages(row: AugmentRecipe, cfg: RecipeConfig, epochs: int) -> list[Stage]:
    """Stage boundaries: strong augmentation off for the last ``off`` epochs, multi-scale off for
    the last ``fixed`` epochs (yolov3_asff)."""
    paper = row.paper_epochs
    if cfg.strong_aug_off_epochs is not None:
        off = min(cfg.strong_aug_off_epochs, epochs)
    else:
        off = scaled_last_epochs(epochs, row.strong_off, paper) if row.strong_off else 0
    fixed = scaled_last_epochs(epochs, row.fixed_size_off, paper) if row.fixed_size_off else 0
    cuts = sorted({0} | {epochs - n for n in (off, fixed) if n > 0})
    return [Stage(f"stage{i + 1}", c, strong=not (off and c >= epochs - off),
                  multiscale=not (fixed and c >= epochs - fixed)) for i, c in enumerate(cuts)]


def build_augmentation(cfg: RecipeConfig, *, size: str, image_size: int, epochs: int, input_spec: Any = None,
                       with_masks: bool = False, batch_size: int = 1, seed: int = 0) -> Augmentation:
    """Resolve ``cfg`` (the row of ``cfg.name`` for model size ``size``, then its overrides).

    ``input_spec`` (detmodels.InputSpec): append PackDetInputs. ``with_masks``: instance masks are
    loaded (RandomCrop keeps negative crops, as RTMDet-Ins). ``batch_size`` (per worker): the
    multi-scale size changes every 10 batches. ``seed``: base seed of the transforms' generators.
    """
    if epochs < 1 or image_size < 32:
        raise ConfigError([f"recipe: expected epochs >= 1 and image_size >= 32, got {epochs}, {image_size}"])
    row = augment_recipe(cfg.name, size)
    return Augmentation(spec=_resolve_spec(cfg, row, image_size), stages=_stages(row, cfg, epochs),
                        image_size=image_size, epochs=epochs, input_spec=input_spec, with_masks=with_masks,
                        batch_size=batch_size, seed=seed)
