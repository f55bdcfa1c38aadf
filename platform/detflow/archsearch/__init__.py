"""``detflow.archsearch``: SpineNet architecture search (SpineNet §3–4) with Optuna; proxy trainings run on Ray Train.

The SDK entry point is ``detflow.nas`` (in :mod:`detflow.sdk`); a NAS file starts with ``kind: nas``.
The runner (which imports torch through ``detmodels``) loads on first use of its names, so that the
workflow schema can import :mod:`.config` cheaply.
"""
from .config import NasConfig

__all__ = ["NasConfig", "NasResult", "run_nas", "load_nas_config", "find_nas"]
_RUNNER_NAMES = ("NasResult", "run_nas", "load_nas_config", "find_nas")


def __getattr__(name: str):
    if name in _RUNNER_NAMES:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
