"""Typed configuration of a SpineNet architecture search (``detflow nas NAS.yaml``).

Example (``workflows/nas/spinenet_proxy_nas.yaml``)::

    kind: nas
    name: spinenet-proxy
    base: ../configs/spinenet_49s_synth.yaml   # training config of a spinenet model
    metric: val/bbox_mAP          # accuracy objective (mode max)
    cost: latency_ms              # params_M | gmacs | latency_ms | null (single objective)
    constraint: {latency_ms: 30}  # the winner: best AP among trials with latency <= 30 ms
    num_samples: 12
    max_concurrent_trials: 2
    max_retries: 1
    search: {name: tpe, seed: 0}  # tpe | nsga2 | random
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}   # on proxy epochs
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    proxy: {filter_size_scale: 0.25, image_size: 256, epochs: 5, holdout_fraction: 0.2}
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from ..config.base import StrictModel
from ..tune.config import TrialResources

__all__ = ["NasSpace", "ProxyTask", "NasSearch", "NasScheduler", "NasObjective", "NasConfig"]


class NasSpace(StrictModel):
    """The search space of SpineNet §3.1: scale permutations, cross-scale connections, block adjustments."""

    permute_intermediate: bool = True
    permute_outputs: bool = True
    connections: bool = True
    level_adjustments: list[int] = Field(default_factory=lambda: [-1, 0, 1, 2])
    block_types: list[Literal["bottleneck", "residual"]] = Field(
        default_factory=lambda: ["bottleneck", "residual"])


class ProxyTask(StrictModel):
    """Proxy training (SpineNet §4: 0.25 feature scale, reduced resolution, a few epochs, held-out AP)."""

    filter_size_scale: float = Field(0.25, gt=0, le=1.5)
    image_size: PositiveInt = 256
    epochs: PositiveInt = 5
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    max_steps_per_epoch: PositiveInt | None = None
    seed: int = 0


class NasSearch(StrictModel):
    """The Optuna sampler proposing specs: TPE or NSGA-II (both model two objectives), or uniform random."""

    name: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    storage: str | None = Field(None, description="Optuna SQL storage URL; default SQLite under the NAS directory")


class NasScheduler(StrictModel):
    """ASHA (successive halving, Li et al. 2020) on the proxy's epochs, or ``none`` (every trial runs all)."""

    name: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1)


class NasObjective(StrictModel):
    """What a search samples and how it scores them: the space, the proxy task, the reward metric, the
    sampler. Shared by :class:`NasConfig` and the workflow ``nas`` step (``detflow.workflows.schema``)."""

    metric: str = "val/bbox_mAP"
    mode: Literal["max", "min"] = "max"
    cost: Literal["params_M", "gmacs", "latency_ms"] | None = Field(
        None, description="second objective (minimised); null: single-objective on `metric`")
    constraint: dict[Literal["params_M", "gmacs", "latency_ms"], float] = Field(
        default_factory=dict, description="the winner is the best `metric` among trials with cost <= value")
    num_samples: PositiveInt = 8
    max_concurrent_trials: PositiveInt = Field(1, description="proxy trainings at once (Ray Tune trials)")
    max_retries: NonNegativeInt = Field(1, description="a crashed trial is retried, then recorded as ERROR")
    space: NasSpace = NasSpace()
    proxy: ProxyTask = ProxyTask()
    search: NasSearch = NasSearch()
    scheduler: NasScheduler = NasScheduler()
    resources: TrialResources = TrialResources()


class _NasTarget(StrictModel):
    """The search's name and base training config (the leading fields of a NAS YAML)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base: str = Field(description="training config YAML of a spinenet model (relative to this file)")
    overrides: list[str] = Field(default_factory=list)


class NasConfig(NasObjective, _NasTarget):
    """A SpineNet architecture search over a base training config of a spinenet model."""

    kind: Literal["nas"] = Field("nas", description="config kind: a NAS file starts with `kind: nas`")
    storage: str = Field("", description="local dir or s3:// URI of the Tune experiment and trial runs; default $DETFLOW_HOME/nas")
