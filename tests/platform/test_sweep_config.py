"""Sweep YAML validation: spaces keyed by dotted config paths, helpful errors, Tune conversion."""
import pytest
import yaml

from detflow.config.compose import load_config, parse_config
from detflow.errors import ConfigError
from detflow.tune.config import SweepConfig
from detflow.tune.space import apply_trial, to_tune_space, trial_label, validate_space_paths

BASE = {
    "model": {"name": "rtmdet_tiny"},
    "data": {"train": {"annotations": "t.json", "images": "img"}, "image_size": 64},
    "train": {"epochs": 3},
}


def _sweep(**space):
    return parse_config(SweepConfig, {"name": "s", "base": "b.yaml", "space": space}, "s.yaml")


def test_param_kinds_and_fixed_values():
    cfg = _sweep(**{"model.assigner.soft_center_alpha": {"uniform": [5, 20]}, "train.epochs": 4,
                    "model.neck.expand_ratio": {"choice": [0.25, 0.5]}, "recipe.mosaic.max_cached_images": {"int": [10, 40]},
                    "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}})
    kinds = {k: v.kind for k, v in cfg.space.items()}
    assert kinds == {"model.assigner.soft_center_alpha": "uniform", "train.epochs": "fixed",
                     "model.neck.expand_ratio": "choice", "recipe.mosaic.max_cached_images": "int",
                     "train.optimizer.lr": "loguniform"}


@pytest.mark.parametrize("spec, message", [
    ({"uniform": [5, 1]}, "low must be < high"),
    ({"uniform": [1, 2], "int": [1, 2]}, "exactly one of"),
    ({"loguniform": [0, 1]}, "bounds must be > 0"),
    ({"choice": []}, "at least one value"),
])
def test_bad_param_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        _sweep(**{"train.epochs": spec})


def test_unknown_path_lists_close_valid_paths():
    cfg = _sweep(**{"model.assigner.soft_centre_alpha": {"uniform": [1.5, 3]}})
    with pytest.raises(ConfigError) as err:
        validate_space_paths(cfg.space, "s.yaml", ["rtmdet_tiny"])
    assert err.value.errors[0].startswith(
        "s.yaml: space.model.assigner.soft_centre_alpha: not a training-config field of rtmdet_tiny (rtmdet); "
        "did you mean model.assigner.soft_center_alpha")


def test_apply_trial_validates_values():
    cfg = apply_trial(BASE, ["train.batch_size=2"], {"model.assigner.soft_center_alpha": 12.5,
                                                      "recipe.mosaic.max_cached_images": 17}, "b.yaml")
    assert cfg.model.assigner.soft_center_alpha == 12.5
    assert cfg.recipe.mosaic.max_cached_images == 17
    assert cfg.train.batch_size == 2
    with pytest.raises(ConfigError, match="model.neck.expand_ratio"):
        apply_trial(BASE, [], {"model.neck.expand_ratio": 5.0}, "b.yaml")


def test_tune_space_and_labels():
    from ray import tune

    cfg = _sweep(**{"model.assigner.soft_center_alpha": {"uniform": [5, 20]}, "train.epochs": 4,
                    "model.neck.expand_ratio": {"choice": [0.25, 0.5]}})
    space = to_tune_space(cfg.space, "tpe")
    assert isinstance(space["model.assigner.soft_center_alpha"], tune.search.sample.Float)
    assert space["train.epochs"] == 4
    grid = to_tune_space(cfg.space, "grid")
    assert grid["model.neck.expand_ratio"] == {"grid_search": [0.25, 0.5]}
    label = trial_label({"model.assigner.soft_center_alpha": 12.3456, "model.neck.expand_ratio": 0.5,
                         "train.epochs": 4}, cfg.space)
    assert label == "soft_center_alpha=12.3,expand_ratio=0.5"


def test_example_sweep_yaml_validates(tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "workflows" / "sweeps" / "rtmdet_tiny_sweep.yaml"
    cfg = load_config(SweepConfig, path)
    validate_space_paths(cfg.space, str(path), ["rtmdet_tiny"])
    assert cfg.scheduler.name == "asha" and cfg.num_samples == 16
    assert yaml.safe_load(path.read_text())["base"] == cfg.base
