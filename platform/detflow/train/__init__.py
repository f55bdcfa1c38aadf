"""Training on Ray Train (``run_training``); prediction is :mod:`detflow.predict`.

>>> from detflow.train import run_training, TrainResult
"""
from .runner import TrainResult, resolve_train_config, run_training

__all__ = ["run_training", "TrainResult", "resolve_train_config"]
