"""Per-worker data for training: datasets, the recipe's stage pipelines, sharded loaders.

Each worker reads its shard through a ``DistributedSampler`` (``set_epoch`` per epoch, so shuffles
differ by epoch and repeat after a restart). The recipe pipeline changes at ``recipe.switch_epoch``;
the cached mixing transforms' state (CachedMosaic / CachedMixUp) is checkpointed when the pipeline
runs in the training process (``data.num_workers == 0``; DataLoader worker processes keep their own
caches, which are then rebuilt after a restart).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import detmodels
from torch.utils.data import DistributedSampler

from ..config.train import TrainConfig
from ..data import CocoDataset, build_dataloader, build_val_transforms
from ..engine.recipes import Recipe, train_recipe

__all__ = ["TrainData", "build_train_data", "model_task"]


def model_task(name: str) -> str:
    return detmodels.get_model_entry(name).task


@dataclasses.dataclass
class TrainData:
    """Datasets and loaders of one worker."""

    cfg: TrainConfig
    train: CocoDataset
    val: CocoDataset | None
    recipe: Recipe
    sampler: DistributedSampler
    task: str
    input_spec: Any

    @property
    def num_classes(self) -> int:
        return self.cfg.model.num_classes or self.train.num_classes

    @property
    def category_ids(self) -> list[int]:
        return list(self.train.category_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.train.class_names)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.sampler) // self.cfg.train.batch_size
        cap = self.cfg.train.max_steps_per_epoch
        return max(min(n, cap) if cap else n, 1)

    def train_loader(self, epoch: int):
        """The loader of ``epoch``, with the recipe stage of that epoch."""
        self.train.set_transforms(self.recipe.augmentation.train_transforms(epoch, dataset=self.train))
        self.sampler.set_epoch(epoch)
        return build_dataloader(self.train, self.cfg.train.batch_size, shuffle=False,
                                num_workers=self.cfg.data.num_workers, sampler=self.sampler,
                                seed=self.cfg.train.seed + epoch, drop_last=True)

    def val_loader(self):
        assert self.val is not None
        return build_dataloader(self.val, self.cfg.train.batch_size, shuffle=False, num_workers=self.cfg.data.num_workers)

    def state_dict(self) -> dict | None:
        return self.recipe.augmentation.state_dict() if self.cfg.data.num_workers == 0 else None

    def load_state_dict(self, state: dict | None, *, epoch: int) -> None:
        if state:
            self.recipe.augmentation.load_state_dict(state, dataset=self.train)


def build_train_data(cfg: TrainConfig, input_spec: Any, *, rank: int = 0, world: int = 1) -> TrainData:
    """Datasets, recipe and sampler for worker ``rank`` of ``world`` (paths in ``cfg`` are absolute;
    ``input_spec``: the model's pixel normalisation)."""
    task = model_task(cfg.model.name)
    with_masks = task == "segm"
    train = CocoDataset(cfg.data.train.annotations, cfg.data.train.images, with_masks=with_masks,
                        filter_empty=cfg.data.filter_empty)
    spec = input_spec
    val = None
    if cfg.data.val is not None:
        val = CocoDataset(cfg.data.val.annotations, cfg.data.val.images,
                          transforms=build_val_transforms(cfg.data.image_size, spec))
    recipe = train_recipe(cfg, input_spec=spec, with_masks=with_masks, batch_size=cfg.train.batch_size,
                          seed=cfg.train.seed * 100 + rank)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed, drop_last=True)
    return TrainData(cfg, train, val, recipe, sampler, task, spec)
