"""Typed configuration of a SpineNet architecture search (``detflow nas NAS.yaml``).

Example (``workflows/nas/spinenet_proxy_nas.yaml``)::

    kind: nas
    name: spinenet-proxy
    base: ../configs/spinenet_49s_synth.yaml   # training config of a spinenet model
    metric: val/bbox_mAP
    num_samples: 8
    search: {name: tpe, seed: 0}
    proxy: {filter_size_scale: 0.25, image_size: 256, epochs: 5, holdout_fraction: 0.2}
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from ..config.base import StrictModel

__all__ = ["NasSpace", "ProxyTask", "NasSearch", "NasObjective", "NasConfig"]


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
    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    storage: str | None = Field(None, description="Optuna SQL storage URL; default SQLite under the NAS directory")


class NasObjective(StrictModel):
    """What a search samples and how it scores them: the space, the proxy task, the reward metric, the
    sampler. Shared by :class:`NasConfig` and the workflow ``nas`` step (``detflow.workflows.schema``)."""

    metric: str = "val/bbox_mAP"
    mode: Literal["max", "min"] = "max"
    num_samples: PositiveInt = 8
    space: NasSpace = NasSpace()
    proxy: ProxyTask = ProxyTask()
    search: NasSearch = NasSearch()


class _NasTarget(StrictModel):
    """The search's name and base training config (the leading fields of a NAS YAML)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base: str = Field(description="training config YAML of a spinenet model (relative to this file)")
    overrides: list[str] = Field(default_factory=list)


class NasConfig(NasObjective, _NasTarget):
    """A SpineNet architecture search over a base training config of a spinenet model."""

    kind: Literal["nas"] = Field("nas", description="config kind: a NAS file starts with `kind: nas`")
    workers: PositiveInt = 1
    storage: str = Field("", description="default $DETFLOW_HOME/nas")
