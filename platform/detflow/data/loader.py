"""Batching: ``collate_detection`` pads packed samples into one tensor; ``build_dataloader`` wires a
seeded, optionally distributed, multi-worker ``torch.utils.data.DataLoader``.

Example::

    ds = CocoDataset(ann, images, transforms=build_val_transforms(320, model.input_spec))
    loader = build_dataloader(ds, 8, shuffle=False, num_workers=2)
    images, targets, metas = next(iter(loader))   # images N×3×H×W, H and W multiples of 32
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["collate_detection", "build_dataloader", "seed_worker"]

Packed = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]


def collate_detection(batch: Sequence[Packed], *, size_divisor: int = 32,
                      pad_value: Sequence[float] | float | None = None
                      ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """Stack ``PackDetInputs`` outputs, padding right/bottom to a common size.

    Args:
        batch: ``(image 3×h×w, target, meta)`` triples.
        size_divisor: the batch height/width are rounded up to a multiple of it.
        pad_value: fill per channel (or one number), in the images' units; ``None`` uses
            ``meta["pad_value"]`` written by ``PackDetInputs`` (the model's ``InputSpec.pad_value``,
            normalised for float images, raw for uint8 ones), else 0.

    Returns:
        images ``N×3×H×W`` (float, or uint8 as packed for training), targets (masks zero-padded to ``H×W``), metas (``batch_input_size``
        added).
    """
    if not batch:
        raise ValueError("collate_detection: empty batch")
    images, targets, metas = zip(*batch)
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    height = -(-height // size_divisor) * size_divisor
    width = -(-width // size_divisor) * size_divisor
    if pad_value is None:
        pad_value = metas[0].get("pad_value", 0.0)
    fill = torch.as_tensor(pad_value, dtype=images[0].dtype).reshape(-1, 1, 1).expand(images[0].shape[0], 1, 1)
    out = fill.expand(images[0].shape[0], height, width).repeat(len(images), 1, 1, 1)
    new_targets, new_metas = [], []
    for i, (img, target, meta) in enumerate(zip(images, targets, metas)):
        out[i, :, :img.shape[1], :img.shape[2]] = img
        target = dict(target)
        masks = target.get("masks")
        if masks is not None and masks.shape[-2:] != (height, width):
            padded = masks.new_zeros((masks.shape[0], height, width))
            padded[:, :masks.shape[1], :masks.shape[2]] = masks
            target["masks"] = padded
        new_targets.append(target)
        new_metas.append({**meta, "batch_input_size": (height, width)})
    return out, new_targets, new_metas


def _reseed_transforms(transforms: Any, seed: int) -> int:
    """Call ``reseed`` on every transform that has one (nested ``Compose`` included), each with its
    own seed ``seed, seed + 1, …``; returns the next unused seed."""
    for transform in getattr(transforms, "transforms", [transforms]):
        if hasattr(transform, "reseed"):
            transform.reseed(seed)
            seed += 1
        elif hasattr(transform, "transforms"):
            seed = _reseed_transforms(transform, seed)
    return seed


def _rank() -> int:
    try:
        import torch.distributed as dist

        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    except (RuntimeError, ValueError):
        return 0


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive everything random in the worker from torch's per-worker
    seed (drawn from the loader's generator each epoch) and the distributed rank: numpy's global
    generator, ``random`` and the ``reseed`` of the dataset's transforms. Augmentations thus differ
    across workers, ranks and epochs, and repeat across runs with the same loader seed."""
    seed = (torch.initial_seed() + 1_000_003 * _rank()) % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        _reseed_transforms(getattr(info.dataset, "transforms", None), seed)


def build_dataloader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int,
                     sampler: Sampler | None = None, seed: int = 0, drop_last: bool = False,
                     pin_memory: bool = False, persistent_workers: bool = False) -> DataLoader:
    """A DataLoader with :func:`collate_detection`, seeded shuffling and worker seeding.

    Args:
        sampler: e.g. a ``DistributedSampler`` built by the caller (who calls its ``set_epoch``);
            ``shuffle`` is then left to the sampler.
        seed: seeds the loader's generator (shuffle order and worker seeds; workers also mix in
            the distributed rank). With ``num_workers=0`` the transforms keep their own generators
            (seeded by whoever built them) and continue their streams.
        persistent_workers: keep workers across epochs. Off by default: workers hold a copy of the
            dataset, so ``dataset.set_transforms`` (a recipe's stage switch) would not reach them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_detection,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )
