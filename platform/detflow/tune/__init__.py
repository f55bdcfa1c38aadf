"""Hyperparameter sweeps on Ray Tune + Optuna (the SDK entry point is ``detflow.sweep``, in
:mod:`detflow.sdk`; a sweep file starts with ``kind: sweep``)."""
from .config import SweepConfig
from .results import SweepResult
from .runner import find_sweep, load_sweep_config, run_sweep

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "load_sweep_config", "find_sweep"]
