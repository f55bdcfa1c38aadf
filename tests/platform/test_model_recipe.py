"""Each variant owns its recipe: a run without ``recipe.name`` trains with its model entry's recipe
(issue 18: a ``yolov6_s`` run without a recipe used to train with RTMDet's)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

_SPLIT = {"annotations": "train.json", "images": "images"}


def _config(model: str, **sections):
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {"model": {"name": model}, "data": {"train": _SPLIT}, **sections})


def test_yolov6_s_without_a_recipe_validates_to_yolov6s_recipe():
    from detflow.config.base import config_to_dict
    from detflow.engine.optim import build_optimizer
    from detflow.engine.recipes import train_recipe

    cfg = _config("yolov6_s")
    assert cfg.recipe.name == "yolov6" and config_to_dict(cfg)["recipe"]["name"] == "yolov6"
    recipe = train_recipe(cfg)
    assert (recipe.name, recipe.size) == ("yolov6", "s")
    spec = recipe.optimizer
    assert (spec.name, spec.lr, spec.momentum, spec.nesterov, spec.weight_decay) == ("sgd", 0.01, 0.937, True, 5e-4)
    assert (recipe.schedule.name, recipe.ema.kind) == ("cosine", "ramped")
    opt = build_optimizer(torch.nn.Conv2d(3, 4, 3), spec, total_batch=64)
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.defaults["momentum"], opt.defaults["nesterov"]) == (0.937, True)
    assert opt.defaults["lr"] == pytest.approx(0.01 * 64 / 256)


def test_every_model_defaults_to_its_entrys_recipe_and_an_explicit_one_wins():
    import detmodels

    for name in detmodels.list_models():
        assert _config(name).recipe.name == detmodels.get_model_entry(name).recipe
    explicit = _config("yolov6_s", recipe={"name": "rtmdet", "flip_prob": 0.0})
    assert explicit.recipe.name == "rtmdet" and explicit.recipe.flip_prob == 0.0


def test_filled_recipe_name_is_not_a_user_setting():
    """Composing a validated config with another model (only the fields a user set are overlaid)
    picks the new model's recipe, not the old model's."""
    from detflow.config import TrainConfig
    from detflow.config.compose import compose

    cfg = _config("yolov6_s", recipe={"flip_prob": 0.25})
    assert cfg.recipe.name == "yolov6" and cfg.recipe.model_fields_set == {"flip_prob"}
    other = compose(TrainConfig, cfg, {"model": {"name": "rtmdet_s"}})
    assert other.recipe.name == "rtmdet" and other.recipe.flip_prob == 0.25
    assert compose(TrainConfig, cfg, {"train.epochs": 3}).recipe.name == "yolov6"


def test_multiscale_on_a_model_recipe_without_it_is_a_one_line_field_error():
    """``recipe.multiscale`` with a model whose filled-in recipe has no multi-scale sizes names the
    field, its value and the layer that set it, not ``(top level)`` and the whole config."""
    from detflow.config import TrainConfig, parse_config
    from detflow.errors import ConfigError

    data = {"model": {"name": "yolov6_s"}, "data": {"train": _SPLIT}}
    with pytest.raises(ConfigError) as err:
        parse_config(TrainConfig, data, "x.yaml", ["recipe.multiscale=[320, 640]"])
    assert err.value.errors == [
        "x.yaml (with --set recipe.multiscale=[320, 640]): recipe.multiscale: expected null: only recipes "
        "yolov3_asff and plain use multi-scale sizes, not 'yolov6' (model yolov6_s's recipe), got [320, 640]"]


def test_overrides_reach_the_resolved_specs():
    from detflow.engine.recipes import train_recipe

    cfg = _config("rtmdet_tiny", train={"optimizer": {"lr": 0.01, "name": "sgd"}, "schedule": {"warmup_iters": 7},
                                        "ema": {"enabled": False}})
    recipe = train_recipe(cfg)
    assert (recipe.optimizer.name, recipe.optimizer.lr, recipe.optimizer.weight_decay) == ("sgd", 0.01, 0.05)
    assert (recipe.schedule.name, recipe.schedule.warmup_iters) == ("flat_cosine", 7)
    assert recipe.ema.enabled is False
    described = recipe.describe()
    assert described["recipe"] == "rtmdet" and described["recipe.optimizer.lr"] == 0.01


# --------------------------------------------------------------------------- a real run on Ray
@pytest.fixture(scope="module")
def synth8(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth8"), num_images=8, image_size=64, seed=1,
                              val_fraction=0.25)


@pytest.mark.slow
def test_yolov6_s_run_without_a_recipe_trains_with_sgd(ray_session, synth8, tmp_path, capsys):
    """``detflow train`` (1 epoch, 2 steps, 64 px, no ``recipe``): the stored config shows recipe
    yolov6, the MLflow params SGD, and the checkpoint's optimizer state is Nesterov SGD at 0.937."""
    import yaml
    from mlflow.tracking import MlflowClient

    from detflow import tracking
    from detflow.cli import main
    from detflow.engine import checkpoint as ck

    split = {"annotations": str(synth8.train_json), "images": str(synth8.images_dir)}
    cfg = {"kind": "train", "name": "yolov6-s-own-recipe", "model": {"name": "yolov6_s"},
           "data": {"train": split, "image_size": 64},
           "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2},
           "scaling": {"workers": 1, "cpus_per_worker": 1}, "storage": str(tmp_path / "runs")}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    stored = yaml.safe_load((Path(result["last_checkpoint"]) / "config.yaml").read_text())
    assert "recipe" not in cfg and stored["recipe"]["name"] == "yolov6"
    groups = ck.load_checkpoint_state(result["last_checkpoint"])["optimizer"]["param_groups"]
    assert groups and all(g["momentum"] == 0.937 and g["nesterov"] is True for g in groups)
    tracking.configure()
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert params["resolved.recipe"] == "yolov6" and params["resolved.recipe.optimizer.name"] == "sgd"
    assert params["resolved.recipe.optimizer.nesterov"] == "True"
