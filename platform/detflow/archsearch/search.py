"""How a NAS proposes and schedules trials on Ray Tune: Optuna (TPE, NSGA-II or random) samples a
SpineNet spec define-by-run (SpineNet §3.1: scale permutations, cross-scale connections, block
adjustments) and hands it to the trial as a constant; ASHA stops weak proxies by epochs trained.

With a ``cost`` the study has two objectives, ``[metric, "cost/<cost>"]`` with ``["max", "min"]``:
Optuna's samplers model both; Tune's scheduler ranks on ``metric`` alone.
"""
from __future__ import annotations

import threading
import warnings
from functools import partial
from pathlib import Path

import optuna

from .config import NasConfig, NasSpace

__all__ = ["SPEC_KEY", "REJECTED_KEY", "objectives", "propose", "nas_searcher", "nas_scheduler", "cost_metric"]

SPEC_KEY = "spec"          # the trial config's sampled spec (a ``spec_to_dict`` mapping)
REJECTED_KEY = "rejected"  # set instead when the sample broke a spec rule no repair fixes


def cost_metric(cost: str) -> str:
    """Name of a cost as reported to Tune / MLflow (``cost/latency_ms``)."""
    from .cost import metric_name

    return metric_name(cost)


def objectives(cfg: NasConfig) -> tuple[list[str], list[str]]:
    """Optuna's metrics and modes: the accuracy ``metric``, plus the cost (minimised) when set."""
    metrics, modes = [cfg.metric], [cfg.mode]
    if cfg.cost:
        metrics.append(cost_metric(cfg.cost))
        modes.append("min")
    return metrics, modes


def propose(trial, *, base: dict, space: dict, name: str) -> dict:
    """Define-by-run space of one trial: the decisions via ``trial.suggest_*`` (captured as the trial's
    params), the repaired spec as the constant ``spec``; a sample no repair fixes is ``rejected``."""
    from detmodels import SpecError, spec_from_dict, spec_to_dict

    from .sampler import sample_spec

    try:
        spec = sample_spec(trial, spec_from_dict(base), NasSpace.model_validate(space), name)
    except SpecError as exc:
        return {REJECTED_KEY: str(exc)}
    return {SPEC_KEY: spec_to_dict(spec)}


class _NSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II (Deb et al. 2002) that pickles (Tune saves the searcher with the study's sampler):
    the thread lock is left out and made anew."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def _sampler(cfg: NasConfig):
    seed = cfg.search.seed
    if cfg.search.name == "nsga2":
        return _NSGAIISampler(seed=seed)
    if cfg.search.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def nas_searcher(cfg: NasConfig, exp_dir: Path, base_spec: dict):
    """``OptunaSearch`` over specs (study in SQL storage we own), at most ``max_concurrent_trials`` at once."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ..tune.launch import optuna_storage

    # one spec is ~60 suggest calls on the SQL study (about a second): expected, not a misuse
    warnings.filterwarnings("ignore", message="Define-by-run function passed", category=UserWarning)
    metrics, modes = objectives(cfg)
    space = partial(propose, base=base_spec, space=cfg.space.model_dump(mode="json"), name=cfg.name)
    search = OptunaSearch(space=space, metric=metrics if cfg.cost else metrics[0],
                          mode=modes if cfg.cost else modes[0], sampler=_sampler(cfg), study_name=cfg.name,
                          storage=optuna_storage(cfg.search.storage, exp_dir))
    return ConcurrencyLimiter(search, max_concurrent=cfg.max_concurrent_trials)


def nas_scheduler(cfg: NasConfig):
    """ASHA on the proxy's epochs (``max_t`` = proxy epochs), or FIFO."""
    from ..tune.launch import epoch_scheduler

    s = cfg.scheduler
    return epoch_scheduler(s.name, max_t=cfg.proxy.epochs, grace_period=min(s.grace_period, cfg.proxy.epochs),
                           reduction_factor=s.reduction_factor)
