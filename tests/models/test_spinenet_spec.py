"""SpineNet architecture as data: validation rules, YAML round trip, zero-out-degree merging."""
import dataclasses

import pytest

from detmodels.families.spinenet_spec import (ScaleSettings, SpecError, load_spec, merged_into,
                                              save_spec, spec_from_dict, spec_to_dict, spinenet49_spec,
                                              validate_spec)


def _with_block(spec, k, **changes):
    blocks = list(spec.blocks)
    blocks[k - 2] = dataclasses.replace(blocks[k - 2], **changes)
    return dataclasses.replace(spec, blocks=tuple(blocks))


def test_spinenet49_is_valid_and_merges_block_11_into_l5():
    spec = validate_spec(spinenet49_spec())
    assert spec.num_blocks == 17
    assert merged_into(spec) == {12: [], 13: [], 14: [11], 15: [], 16: []}
    assert sorted(spec.block(k).level for k in range(2, 17) if spec.block(k).output) == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("changes, message", [
    ({"inputs": (5, 9)}, "block 7 (L4 bottleneck): input 9 must be an earlier block"),
    ({"level": 9}, "block 7 (L9 bottleneck): level must be in [2, 7]"),
    ({"block_type": "dense"}, "type must be one of bottleneck, residual"),
])
def test_block_rules_name_the_block(changes, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        validate_spec(_with_block(spinenet49_spec(), 7, **changes))


def test_output_levels_exactly_once():
    spec = _with_block(spinenet49_spec(), 12, level=3)  # two L3 outputs, no L4 output
    with pytest.raises(SpecError) as err:
        validate_spec(spec)
    assert "level L3 must be an output exactly once, found 2" in str(err.value)
    assert "level L4 must be an output exactly once, found 0" in str(err.value)


def test_dangling_block_rejected():
    spec = _with_block(spinenet49_spec(), 11, block_type="residual")  # no L5 residual output absorbs it
    with pytest.raises(SpecError, match=r"block 11 \(L5 residual\): dangling"):
        validate_spec(spec)


def test_yaml_round_trip(tmp_path):
    spec = spinenet49_spec(ScaleSettings(0.65, 1, 0.5, 128), name="spinenet-49s")
    path = save_spec(spec, tmp_path / "s.yaml")
    assert load_spec(path) == spec
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("blocks:\n  - {level: 2, type: bottleneck}\n")
    with pytest.raises(SpecError, match=r"bad.yaml: blocks\[0\] \(block 2\): expected level"):
        load_spec(path)
    path.write_text("blocks: [\n")
    with pytest.raises(SpecError, match="bad.yaml: invalid YAML"):
        load_spec(path)
