"""Single-process training engine: loop, optimiser groups, LR schedules, EMA and checkpoints.

>>> from detflow.engine import TrainLoop, build_optimizer, build_schedule, IterLRScheduler, build_ema
"""
from .checkpoint import list_checkpoints, load_checkpoint_model, load_checkpoint_state, save_checkpoint
from .ema import ExpMomentumEMA, ModelEMA, RampedEMA, build_ema, unwrap_model
from .loop import EpochStats, TrainLoop, distill_alpha, evaluate_model, primary_metric
from .optim import build_optimizer, param_groups
from .schedules import IterLRScheduler, LRSchedule, build_schedule

__all__ = [
    "TrainLoop", "EpochStats", "distill_alpha", "evaluate_model", "primary_metric", "build_optimizer",
    "param_groups", "LRSchedule", "IterLRScheduler", "build_schedule", "ModelEMA", "ExpMomentumEMA",
    "RampedEMA", "build_ema", "unwrap_model", "save_checkpoint", "load_checkpoint_state",
    "load_checkpoint_model", "list_checkpoints",
]
