"""Hyperparameter sweeps on Ray Tune + Optuna, and the Python SDK entry point ``sweep``."""
from .config import SweepConfig
from .results import SweepResult
from .runner import find_sweep, load_sweep_config, run_sweep
from .sdk import sweep

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "load_sweep_config", "find_sweep", "sweep"]
