"""Hyperparameter sweeps on Ray Tune + Optuna, and the Python SDK entry point ``sweep``."""
from .config import SweepConfig
from .results import SweepResult
from .runner import find_sweep, load_sweep_config, run_sweep
from .sdk import sweep

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "load_sweep_config", "find_sweep", "sweep"]


def _load_and_check(path, overrides):
    """``detflow config validate`` for sweeps: the space paths, the base config and every range's extremes."""
    from ..config.base import read_yaml
    from ..paths import resolve_path
    from .runner import _validate

    cfg, config_dir = load_sweep_config(path, list(overrides))
    base_path = resolve_path(cfg.base, config_dir)
    _validate(cfg, read_yaml(base_path) or {}, str(base_path))
    return cfg


def _register_kind() -> None:
    from ..config.kinds import register_config_kind

    register_config_kind("sweep", SweepConfig, lambda d: "space" in d and "base" in d, priority=20,
                         load=_load_and_check)


_register_kind()
