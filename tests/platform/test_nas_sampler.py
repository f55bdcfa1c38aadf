"""NAS sampling from the SpineNet search space: valid specs, repair, determinism, config."""
import optuna
import pytest

from detflow.config.compose import load_config
from detflow.archsearch.config import NasConfig, NasSpace
from detflow.archsearch.proxy import holdout_split
from detflow.archsearch.sampler import repair_spec, sample_spec
from detmodels.families.spinenet_spec import NUM_STEM_BLOCKS, SpecError, spinenet49_spec, validate_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _samples(n, seed=0, space=NasSpace()):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        out.append(sample_spec(trial, spinenet49_spec(), space, f"c{i}"))
        study.tell(trial, 0.0)
    return out


def test_samples_are_valid_and_diverse():
    specs = _samples(40)
    for spec in specs:
        validate_spec(spec)
        outs = sorted(spec.block(k).level for k in range(NUM_STEM_BLOCKS, spec.num_blocks) if spec.block(k).output)
        assert outs == [3, 4, 5, 6, 7]
        for k in range(NUM_STEM_BLOCKS, spec.num_blocks):
            a, b = spec.block(k).inputs
            assert a != b and a < k and b < k
    assert len({s.blocks for s in specs}) == 40


def test_sampling_is_deterministic_for_a_seed():
    assert [s.blocks for s in _samples(5, seed=3)] == [s.blocks for s in _samples(5, seed=3)]


def test_fixed_space_reproduces_spinenet49():
    space = NasSpace(permute_intermediate=False, permute_outputs=False, connections=False,
                     level_adjustments=[], block_types=[])
    assert _samples(1, space=space)[0].blocks == spinenet49_spec().blocks


def test_repair_attaches_dangling_block():
    import dataclasses

    spec = spinenet49_spec()
    blocks = list(spec.blocks)
    blocks[8 - 2] = dataclasses.replace(blocks[8 - 2], inputs=(6, 7))  # block 9 no longer reads block 8
    blocks[9 - 2] = dataclasses.replace(blocks[9 - 2], inputs=(6, 7))
    blocks[10 - 2] = dataclasses.replace(blocks[10 - 2], inputs=(7, 9))
    blocks[11 - 2] = dataclasses.replace(blocks[11 - 2], inputs=(7, 10))
    broken = dataclasses.replace(spec, blocks=tuple(blocks))
    with pytest.raises(SpecError, match="dangling"):
        validate_spec(broken)
    fixed = repair_spec(broken)
    assert any(8 in fixed.block(k).inputs for k in range(9, fixed.num_blocks))


def test_holdout_split_is_deterministic(tmp_path):
    import json

    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in range(10)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
                            for i in range(10)],
            "categories": [{"id": 1, "name": "a"}]}
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(coco))
    tr, va = holdout_split(ann, tmp_path / "a", 0.3, seed=1)
    tr2, va2 = holdout_split(ann, tmp_path / "b", 0.3, seed=1)
    val_ids = {im["id"] for im in json.loads(va.read_text())["images"]}
    assert len(val_ids) == 3 and val_ids == {im["id"] for im in json.loads(va2.read_text())["images"]}
    assert not val_ids & {im["id"] for im in json.loads(tr.read_text())["images"]}


def test_example_nas_yaml_validates():
    from pathlib import Path

    cfg = load_config(NasConfig, Path(__file__).resolve().parents[2] / "workflows" / "nas" / "spinenet_proxy_nas.yaml")
    assert cfg.proxy.filter_size_scale == 0.25 and cfg.space.level_adjustments == [-1, 0, 1, 2]


@pytest.mark.parametrize("search", ["tpe", "nsga2", "random"])
def test_nas_searcher_proposes_specs_for_two_objectives(tmp_path, search):
    """The Tune searcher of a NAS: a define-by-run Optuna study with [AP max, cost min] in SQL storage;
    each suggestion carries the searched decisions and a valid spec constant, and survives a pickle
    (Tune saves the searcher for resume)."""
    import pickle

    from detflow.archsearch.search import SPEC_KEY, nas_searcher, objectives
    from detmodels import spec_from_dict, spec_to_dict

    cfg = NasConfig(name="two", base="b.yaml", cost="latency_ms", max_concurrent_trials=2,
                    search={"name": search, "seed": 0})
    assert objectives(cfg) == (["val/bbox_mAP", "cost/latency_ms"], ["max", "min"])
    searcher = nas_searcher(cfg, tmp_path, spec_to_dict(spinenet49_spec()))
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert searcher.suggest("t3") is None  # max_concurrent_trials=2 already running
    for config in (first, second):
        validate_spec(spec_from_dict(config[SPEC_KEY]))
        assert "b2_level" in config and "inter_key0" in config
    assert first[SPEC_KEY] != second[SPEC_KEY]
    searcher.on_trial_complete("t1", {"val/bbox_mAP": 0.1, "cost/latency_ms": 12.0})
    pickle.loads(pickle.dumps(searcher))
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE] == [[0.1, 12.0]]
    assert len(study.directions) == 2
