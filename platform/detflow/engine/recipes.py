"""Training recipes: per (recipe, size), the paper's optimiser, LR schedule and EMA (this module)
plus its augmentation pipeline (:mod:`detflow.data.augment_recipes`), resolved for one run.

A run's recipe is its model's (``detmodels.get_model_entry(name).recipe``, filled into
``recipe.name`` when the TrainConfig is validated) at the model's ``entry.size``; the config's
``recipe.*`` fields override the augmentation, ``train.optimizer`` / ``train.schedule`` /
``train.ema`` the specs.

Rows (reference fact sheet §2.7, §3.4, §4.5, §5.3; optimiser · schedule · EMA):

* ``rtmdet``: AdamW lr 0.004 for 256 images, wd 0.05 · flat-cosine (1000 warm-up iterations, flat
  for half the run, η_min 0.05·lr) · ExpMomentumEMA (2e-4, γ 2000).
* ``rtmdet_ins``: as ``rtmdet``; size x: lr 0.002 for 128 images (RTMDet-Ins-x).
* ``yolov6``: Nesterov SGD lr 0.01 (n, n6: 0.02) for 256 images, momentum 0.937, wd 5e-4 · cosine
  (warm-up max(3 epochs, 1000 it), lrf 0.01) · ramped EMA (0.9999, ramp 2000).
* ``retinanet``: SGD lr 0.28 for 256 images, momentum 0.9, wd 4e-5 · step ×0.1 at 95 % and 98 %
  (2000 linear warm-up iterations from 0.0067·lr, tensorflow/models) · no EMA.
* ``yolov3_asff``: SGD lr 0.001 (not scaled by batch), momentum 0.9, wd 5e-4 · 5-epoch burn-in
  lr·progress⁴ (the ASFF / darknet burn-in), flat to epoch 20 of 300, then cosine · no EMA.
* ``plain``: AdamW lr 0.001 for 64 images, wd 0.05 · cosine (warm-up max(200 it, 1 epoch)) · EMA.

A size without its own row (another family's model) takes the recipe's ``any`` row.

Example::

    recipe = train_recipe(cfg, input_spec=model.input_spec)       # cfg: a validated TrainConfig
    optimizer = build_optimizer(model, recipe.optimizer, total_batch=64)
    dataset.set_transforms(recipe.augmentation.train_transforms(epoch, dataset=dataset))
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from ..config.train import EMAConfig, OptimizerConfig, RecipeConfig, ScheduleConfig, TrainConfig
from ..data.augment_recipes import ANY_SIZE, Augmentation, build_augmentation, recipe_row
from ..errors import ConfigError
from .specs import EMASpec, OptimizerSpec, ScheduleSpec

__all__ = ["EngineRecipe", "ENGINE_RECIPES", "engine_recipe", "Recipe", "build_recipe", "train_recipe"]


@dataclass(frozen=True, kw_only=True)
class EngineRecipe:
    """One (recipe, size) row: optimiser, LR schedule and EMA."""

    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    ema: EMASpec


_RTMDET = EngineRecipe(
    optimizer=OptimizerSpec(name="adamw", lr=0.004, weight_decay=0.05, momentum=0.9, nesterov=False,
                            base_batch=256, scale_lr_by_batch=True),
    schedule=ScheduleSpec(name="flat_cosine", warmup_iters=1000, warmup_epochs=0.0, min_lr_ratio=0.05,
                          flat_fraction=0.5),
    ema=EMASpec(enabled=True, kind="exp_momentum", momentum=0.0002, gamma=2000.0))
_RTMDET_INS_X = replace(_RTMDET, optimizer=replace(_RTMDET.optimizer, lr=0.002, base_batch=128))

_YOLOV6 = EngineRecipe(
    optimizer=OptimizerSpec(name="sgd", lr=0.01, weight_decay=5e-4, momentum=0.937, nesterov=True,
                            base_batch=256, scale_lr_by_batch=True),
    schedule=ScheduleSpec(name="cosine", warmup_iters=1000, warmup_epochs=3.0, min_lr_ratio=0.01,
                          flat_fraction=0.0, warmup_start=0.0),
    ema=EMASpec(enabled=True, kind="ramped", decay=0.9999, gamma=2000.0))
_YOLOV6_N = replace(_YOLOV6, optimizer=replace(_YOLOV6.optimizer, lr=0.02))

_RETINANET = EngineRecipe(
    optimizer=OptimizerSpec(name="sgd", lr=0.28, weight_decay=4e-5, momentum=0.9, nesterov=False,
                            base_batch=256, scale_lr_by_batch=True),
    schedule=ScheduleSpec(name="step", warmup_iters=2000, warmup_epochs=0.0, min_lr_ratio=0.01,
                          flat_fraction=0.0, milestones=(0.95, 0.98), warmup_start=0.0067),
    ema=EMASpec(enabled=False, kind="exp_momentum"))

_YOLOV3_ASFF = EngineRecipe(
    optimizer=OptimizerSpec(name="sgd", lr=0.001, weight_decay=5e-4, momentum=0.9, nesterov=False,
                            base_batch=64, scale_lr_by_batch=False),
    schedule=ScheduleSpec(name="flat_cosine", warmup_iters=0, warmup_epochs=5.0, min_lr_ratio=0.01,
                          flat_fraction=20 / 300, warmup_start=0.0, warmup_power=4.0),
    ema=EMASpec(enabled=False, kind="exp_momentum"))

_PLAIN = replace(  # rtmdet's AdamW and EMA at lr 0.001 for 64 images, with a short-warm-up cosine
    _RTMDET, optimizer=replace(_RTMDET.optimizer, lr=0.001, base_batch=64),
    schedule=replace(_RTMDET.schedule, name="cosine", warmup_iters=200, warmup_epochs=1.0, flat_fraction=0.0,
                     warmup_start=0.0))

ENGINE_RECIPES: dict[tuple[str, str], EngineRecipe] = {
    ("rtmdet", ANY_SIZE): _RTMDET,
    ("rtmdet_ins", ANY_SIZE): _RTMDET, ("rtmdet_ins", "x"): _RTMDET_INS_X,
    ("yolov6", ANY_SIZE): _YOLOV6, ("yolov6", "n"): _YOLOV6_N, ("yolov6", "n6"): _YOLOV6_N,
    ("retinanet", ANY_SIZE): _RETINANET,
    ("yolov3_asff", ANY_SIZE): _YOLOV3_ASFF,
    ("plain", ANY_SIZE): _PLAIN,
}


def engine_recipe(name: str, size: str) -> EngineRecipe:
    """The row of recipe ``name`` for model size ``size`` (its ``any`` row when it has none)."""
    return recipe_row(ENGINE_RECIPES, name, size, "recipe")


@dataclass(frozen=True)
class Recipe:
    """The resolved recipe of one run: augmentation stages and the optimiser/schedule/EMA specs
    (the config's overrides applied)."""

    name: str
    size: str
    augmentation: Augmentation
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    ema: EMASpec

    @property
    def switch_epoch(self) -> int:
        """First epoch (0-based) of the second augmentation stage, ``epochs`` when none."""
        return self.augmentation.switch_epoch

    def describe(self) -> dict[str, Any]:
        """Flat summary for logging (MLflow params): stages, switch epoch, resolved knobs and specs."""
        return {
            "recipe": self.name, "recipe.size": self.size, **self.augmentation.describe(),
            **{f"recipe.{part}.{k}": v for part in ("optimizer", "schedule", "ema")
               for k, v in dataclasses.asdict(getattr(self, part)).items()},
        }


def build_recipe(cfg: RecipeConfig, *, size: str, image_size: int, epochs: int,
                 optimizer: OptimizerConfig | None = None, schedule: ScheduleConfig | None = None,
                 ema: EMAConfig | None = None, **augmentation: Any) -> Recipe:
    """The recipe ``cfg.name`` for model size ``size``, with ``cfg``'s augmentation overrides and
    the ``optimizer`` / ``schedule`` / ``ema`` overrides (``train.*`` of a TrainConfig).

    ``augmentation``: ``input_spec``, ``with_masks``, ``batch_size``, ``seed`` of
    :func:`detflow.data.augment_recipes.build_augmentation`.
    """
    if cfg.name is None:
        raise ConfigError(["recipe.name: expected a recipe name, got None (a TrainConfig fills in its model's)"])
    row = engine_recipe(cfg.name, size)
    aug = build_augmentation(cfg, size=size, image_size=image_size, epochs=epochs, **augmentation)
    return Recipe(name=cfg.name, size=size, augmentation=aug, optimizer=row.optimizer.merged(optimizer),
                  schedule=row.schedule.merged(schedule), ema=row.ema.merged(ema))


def train_recipe(cfg: TrainConfig, **augmentation: Any) -> Recipe:
    """The recipe of a validated TrainConfig: ``cfg.recipe`` at the model's size
    (``detmodels.get_model_entry(cfg.model.name).size``) with ``cfg.train``'s optimiser, schedule
    and EMA overrides; ``augmentation`` as in :func:`build_recipe`."""
    import detmodels

    size = detmodels.get_model_entry(cfg.model.name).size
    return build_recipe(cfg.recipe, size=size, image_size=cfg.data.image_size, epochs=cfg.train.epochs,
                        optimizer=cfg.train.optimizer, schedule=cfg.train.schedule, ema=cfg.train.ema,
                        **augmentation)
