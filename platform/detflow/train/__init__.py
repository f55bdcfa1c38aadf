"""Training on Ray Train (``run_training``) and prediction with a checkpoint (``predict``).

>>> from detflow.train import run_training, predict, TrainResult
"""
from .predict import predict
from .runner import TrainResult, resolve_train_config, run_training

__all__ = ["run_training", "TrainResult", "resolve_train_config", "predict"]
