"""Sampling SpineNet specs from the §3.1 search space with an Optuna trial (define-by-run), and
repairing samples that break a spec rule (so that a bad sample never crashes the search).

Decisions per sample, all made through ``trial.suggest_*`` so TPE can model them:
* scale permutation of the intermediate blocks and, separately, of the output blocks
  (a random key per block, blocks ordered by key: (N−5)!·5! orderings);
* two parents per block among earlier blocks;
* per intermediate block a level adjustment in {−1, 0, +1, +2} and a type in {bottleneck, residual}.
Output blocks keep the five levels L3–L7 (only their order is permuted).
"""
from __future__ import annotations

import dataclasses

from detmodels import NUM_STEM_BLOCKS, BlockSpec, SpecError, SpineNetSpec, validate_spec

from .config import NasSpace

__all__ = ["sample_spec", "repair_spec"]


def _permuted(trial, prefix: str, items: list[BlockSpec], enabled: bool) -> list[BlockSpec]:
    if not enabled or len(items) < 2:
        return items
    keys = [trial.suggest_float(f"{prefix}_key{i}", 0.0, 1.0) for i in range(len(items))]
    return [items[i] for i in sorted(range(len(items)), key=lambda i: keys[i])]


def _adjusted(trial, k: int, b: BlockSpec, space: NasSpace, max_level: int) -> BlockSpec:
    delta = trial.suggest_categorical(f"b{k}_level", space.level_adjustments) if space.level_adjustments else 0
    kind = trial.suggest_categorical(f"b{k}_type", space.block_types) if space.block_types else b.block_type
    return dataclasses.replace(b, level=min(max(b.level + int(delta), 2), max_level), block_type=kind)


def _parents(trial, k: int, b: BlockSpec, space: NasSpace) -> tuple[int, int]:
    if not space.connections:
        return b.inputs
    first = trial.suggest_int(f"b{k}_in0", 0, k - 1)
    second = trial.suggest_int(f"b{k}_in1", 0, k - 2) if k > 1 else 0
    if second >= first:  # sample the second parent among the k-1 others: always distinct
        second += 1
    return (first, second)


def sample_spec(trial, base: SpineNetSpec, space: NasSpace, name: str) -> SpineNetSpec:
    """One candidate spec from ``base`` (its block count and output levels are kept)."""
    inter = [b for b in base.blocks if not b.output]
    outs = [b for b in base.blocks if b.output]
    inter = _permuted(trial, "inter", inter, space.permute_intermediate)
    outs = _permuted(trial, "out", outs, space.permute_outputs)
    blocks = []
    for i, b in enumerate([*inter, *outs]):
        k = i + NUM_STEM_BLOCKS
        if not b.output:
            b = _adjusted(trial, k, b, space, base.max_level)
        blocks.append(dataclasses.replace(b, inputs=_parents(trial, k, b, space)))
    return repair_spec(dataclasses.replace(base, blocks=tuple(blocks), name=name))


def repair_spec(spec: SpineNetSpec) -> SpineNetSpec:
    """Make a sampled spec valid where a local fix exists: a dangling block becomes the second
    parent of the first later block that does not already take it. Raises :class:`SpecError`
    when the spec cannot be repaired (the caller records the sample as rejected)."""
    for _ in range(len(spec.blocks)):
        try:
            return validate_spec(spec)
        except SpecError as exc:
            if "dangling" not in str(exc):
                raise
            spec = _attach_first_dangling(spec)
    return validate_spec(spec)


def _attach_first_dangling(spec: SpineNetSpec) -> SpineNetSpec:
    used = {i for b in spec.blocks for i in b.inputs}
    blocks = list(spec.blocks)
    for j in range(NUM_STEM_BLOCKS, spec.num_blocks):
        if j in used or spec.block(j).output:
            continue
        for k in range(j + 1, spec.num_blocks):
            b = blocks[k - NUM_STEM_BLOCKS]
            if j not in b.inputs:
                blocks[k - NUM_STEM_BLOCKS] = dataclasses.replace(b, inputs=(b.inputs[0], j))
                return dataclasses.replace(spec, blocks=tuple(blocks))
    raise SpecError(f"{spec.name}: cannot repair dangling blocks")
