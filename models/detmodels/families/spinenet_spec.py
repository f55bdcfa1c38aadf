"""SpineNet architecture as data (Du et al. 2020, arXiv 1912.05027 §3): a list of block specs plus
scale settings, loadable from and writable to YAML, validated before any network is built.

Block indices count the two L2 stem blocks first (indices 0 and 1); the scale-permuted block k ≥ 2
is ``blocks[k - 2]``. Each block takes exactly two inputs, earlier block indices. Blocks with zero
out-degree are summed into the output block of the same level and type (§3.1 "cross-scale
connections"); a non-output block that feeds nothing and matches no output is *dangling*.

YAML form::

    name: spinenet-49
    min_level: 3
    max_level: 7
    blocks:
      - {level: 2, type: bottleneck, inputs: [0, 1]}
      - {level: 4, type: residual, inputs: [0, 1]}
      ...
      - {level: 4, type: bottleneck, inputs: [5, 10], output: true}
    scale: {filter_size_scale: 1.0, block_repeats: 1, resample_alpha: 0.5, endpoints_num_filters: 256}
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "BlockSpec", "ScaleSettings", "SpineNetSpec", "SpecError", "SPINENET_49_BLOCKS", "spinenet49_spec",
    "validate_spec", "spec_from_dict", "spec_to_dict", "load_spec", "save_spec", "merged_into",
    "NUM_STEM_BLOCKS", "BLOCK_TYPES",
]

NUM_STEM_BLOCKS = 2
BLOCK_TYPES = ("bottleneck", "residual")


class SpecError(ValueError):
    """An invalid SpineNet spec; the message names the block and the rule it breaks."""


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One scale-permuted block: its feature level (stride 2^level), type, two parents, output flag."""

    level: int
    block_type: str
    inputs: tuple[int, int]
    output: bool = False


@dataclasses.dataclass(frozen=True)
class ScaleSettings:
    """Width/depth scaling of a SpineNet (§4.3 SCALING_MAP)."""

    filter_size_scale: float = 1.0
    block_repeats: int = 1
    resample_alpha: float = 0.5
    endpoints_num_filters: int = 256


@dataclasses.dataclass(frozen=True)
class SpineNetSpec:
    blocks: tuple[BlockSpec, ...]
    min_level: int = 3
    max_level: int = 7
    scale: ScaleSettings | None = None
    name: str = "spinenet"

    @property
    def num_blocks(self) -> int:
        """All blocks including the two stem blocks."""
        return NUM_STEM_BLOCKS + len(self.blocks)

    def block(self, index: int) -> BlockSpec:
        """Spec of block ``index`` (stem blocks are L2 bottlenecks with no parents)."""
        if index < NUM_STEM_BLOCKS:
            return BlockSpec(2, "bottleneck", (-1, -1))
        return self.blocks[index - NUM_STEM_BLOCKS]


# SpineNet-49 (arXiv 1912.05027, Fig. 4 / the authors' released spec): (level, type, inputs, output).
SPINENET_49_BLOCKS: tuple[BlockSpec, ...] = tuple(BlockSpec(lv, t, i, o) for lv, t, i, o in [
    (2, "bottleneck", (0, 1), False),
    (4, "residual", (0, 1), False),
    (3, "bottleneck", (2, 3), False),
    (4, "bottleneck", (2, 4), False),
    (6, "residual", (3, 5), False),
    (4, "bottleneck", (3, 5), False),
    (5, "residual", (6, 7), False),
    (7, "residual", (6, 8), False),
    (5, "bottleneck", (8, 9), False),
    (5, "bottleneck", (8, 10), False),
    (4, "bottleneck", (5, 10), True),
    (3, "bottleneck", (4, 10), True),
    (5, "bottleneck", (7, 12), True),
    (7, "bottleneck", (5, 14), True),
    (6, "bottleneck", (12, 14), True),
])


def spinenet49_spec(scale: ScaleSettings | None = None, name: str = "spinenet-49") -> SpineNetSpec:
    return SpineNetSpec(SPINENET_49_BLOCKS, 3, 7, scale, name)


def _out_degrees(spec: SpineNetSpec) -> list[int]:
    deg = [0] * spec.num_blocks
    for b in spec.blocks:
        for i in b.inputs:
            if 0 <= i < spec.num_blocks:
                deg[i] += 1
    return deg


def merged_into(spec: SpineNetSpec) -> dict[int, list[int]]:
    """Output block index → zero-out-degree blocks summed into it (same level and type, earlier)."""
    deg = _out_degrees(spec)
    merged: dict[int, list[int]] = {}
    for k in range(NUM_STEM_BLOCKS, spec.num_blocks):
        b = spec.block(k)
        if not b.output:
            continue
        merged[k] = [j for j in range(NUM_STEM_BLOCKS, k) if deg[j] == 0 and not spec.block(j).output
                     and spec.block(j).level == b.level and spec.block(j).block_type == b.block_type]
    return merged


def _check_block(spec: SpineNetSpec, k: int, b: BlockSpec) -> list[str]:
    where = f"block {k} (L{b.level} {b.block_type})"
    errors = []
    if b.block_type not in BLOCK_TYPES:
        errors.append(f"{where}: type must be one of {', '.join(BLOCK_TYPES)}")
    if not 2 <= b.level <= spec.max_level:
        errors.append(f"{where}: level must be in [2, {spec.max_level}]")
    if len(b.inputs) != 2:
        errors.append(f"{where}: needs exactly two inputs, got {list(b.inputs)}")
    for i in b.inputs:
        if not 0 <= i < k:
            errors.append(f"{where}: input {i} must be an earlier block (0..{k - 1}): parents precede the block")
    return errors


def validate_spec(spec: SpineNetSpec) -> SpineNetSpec:
    """Check the rules of §3.1; raise :class:`SpecError` listing every broken rule."""
    errors: list[str] = []
    if not 2 < spec.min_level <= spec.max_level:
        errors.append(f"min_level/max_level: expected 3 <= min_level <= max_level, got {spec.min_level}/{spec.max_level}")
    for k in range(NUM_STEM_BLOCKS, spec.num_blocks):
        errors += _check_block(spec, k, spec.block(k))
    out_levels = [spec.block(k).level for k in range(NUM_STEM_BLOCKS, spec.num_blocks) if spec.block(k).output]
    for level in range(spec.min_level, spec.max_level + 1):
        n = out_levels.count(level)
        if n != 1:
            errors.append(f"outputs: level L{level} must be an output exactly once, found {n}")
    extra = sorted({lv for lv in out_levels if not spec.min_level <= lv <= spec.max_level})
    if extra:
        errors.append(f"outputs: levels {extra} are outside [L{spec.min_level}, L{spec.max_level}]")
    if not errors:
        errors += _dangling(spec)
    if errors:
        raise SpecError(f"{spec.name}: " + "; ".join(errors))
    return spec


def _dangling(spec: SpineNetSpec) -> list[str]:
    deg = _out_degrees(spec)
    merged = {j for js in merged_into(spec).values() for j in js}
    return [f"block {k} (L{spec.block(k).level} {spec.block(k).block_type}): dangling — it feeds no later block "
            f"and no output of the same level and type can absorb it"
            for k in range(NUM_STEM_BLOCKS, spec.num_blocks)
            if deg[k] == 0 and not spec.block(k).output and k not in merged]


def spec_to_dict(spec: SpineNetSpec) -> dict[str, Any]:
    data: dict[str, Any] = {"name": spec.name, "min_level": spec.min_level, "max_level": spec.max_level,
                            "blocks": [{"level": b.level, "type": b.block_type, "inputs": list(b.inputs),
                                        **({"output": True} if b.output else {})} for b in spec.blocks]}
    if spec.scale is not None:
        data["scale"] = dataclasses.asdict(spec.scale)
    return data


def _parse_block(i: int, raw: Any) -> BlockSpec:
    k = i + NUM_STEM_BLOCKS
    if not isinstance(raw, dict):
        raise SpecError(f"blocks[{i}] (block {k}): expected a mapping with level, type, inputs")
    unknown = set(raw) - {"level", "type", "inputs", "output"}
    if unknown:
        raise SpecError(f"blocks[{i}] (block {k}): unknown keys {sorted(unknown)}")
    try:
        return BlockSpec(int(raw["level"]), str(raw["type"]), tuple(int(x) for x in raw["inputs"]),
                         bool(raw.get("output", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"blocks[{i}] (block {k}): expected level (int), type, inputs (two ints): {exc}") from None


def spec_from_dict(data: dict[str, Any], *, validate: bool = True) -> SpineNetSpec:
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), list):
        raise SpecError("spec: expected a mapping with a 'blocks' list")
    unknown = set(data) - {"name", "min_level", "max_level", "blocks", "scale"}
    if unknown:
        raise SpecError(f"spec: unknown keys {sorted(unknown)}")
    scale = None
    if data.get("scale") is not None:
        try:
            scale = ScaleSettings(**data["scale"])
        except TypeError as exc:
            raise SpecError(f"scale: {exc}") from None
    spec = SpineNetSpec(tuple(_parse_block(i, b) for i, b in enumerate(data["blocks"])),
                        int(data.get("min_level", 3)), int(data.get("max_level", 7)), scale,
                        str(data.get("name", "spinenet")))
    return validate_spec(spec) if validate else spec


def load_spec(path: str | Path) -> SpineNetSpec:
    """Read and validate a spec YAML (``yaml.safe_load``); errors name the file."""
    import yaml  # only needed for spec files; detmodels otherwise imports torch alone

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def save_spec(spec: SpineNetSpec, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    return path


def iter_output_blocks(spec: SpineNetSpec) -> Iterable[int]:
    return (k for k in range(NUM_STEM_BLOCKS, spec.num_blocks) if spec.block(k).output)
