"""Single-process training engine: loop, recipes (optimiser, LR schedule, EMA specs per recipe and
size), optimiser groups, LR schedules, EMA and checkpoints.

>>> from detflow.engine import TrainLoop, train_recipe, build_optimizer, build_schedule, build_ema
"""
from .checkpoint import list_checkpoints, load_checkpoint_model, load_checkpoint_state, save_checkpoint
from .ema import ExpMomentumEMA, ModelEMA, RampedEMA, build_ema, unwrap_model
from .loop import EpochStats, TrainLoop, distill_alpha, evaluate_model, primary_metric
from .optim import build_optimizer, param_groups
from .recipes import Recipe, build_recipe, train_recipe
from .schedules import IterLRScheduler, LRSchedule, build_schedule
from .specs import EMASpec, OptimizerSpec, ScheduleSpec

__all__ = [
    "TrainLoop", "EpochStats", "distill_alpha", "evaluate_model", "primary_metric", "build_optimizer",
    "param_groups", "LRSchedule", "IterLRScheduler", "build_schedule", "ModelEMA", "ExpMomentumEMA",
    "RampedEMA", "build_ema", "unwrap_model", "save_checkpoint", "load_checkpoint_state",
    "load_checkpoint_model", "list_checkpoints", "Recipe", "build_recipe", "train_recipe", "OptimizerSpec",
    "ScheduleSpec", "EMASpec",
]
