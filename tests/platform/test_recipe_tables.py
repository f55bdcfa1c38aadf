"""Recipe tables keyed by (recipe, size): every registered model resolves to exactly the values the
pre-issue-18 code produced (``tests/fixtures/recipes_before_issue18.json``, captured from
``detflow.data.recipes.build_recipe`` before the redesign), and its default recipe is its entry's."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import detmodels
import pytest
import torch

from detflow.config.train import RECIPE_NAMES, RecipeConfig
from detflow.engine.ema import build_ema
from detflow.engine.optim import build_optimizer
from detflow.engine.recipes import ENGINE_RECIPES, build_recipe
from detflow.engine.schedules import build_schedule
from detflow.data.augment_recipes import AUGMENT_RECIPES

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "recipes_before_issue18.json").read_text())


def _plain(value):
    """JSON-shaped copy (dataclasses and pydantic models as dicts, tuples as lists)."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("_")}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _resolved(recipe) -> dict:
    aug = recipe.augmentation
    return json.loads(json.dumps({
        "optimizer": _plain(recipe.optimizer), "schedule": _plain(recipe.schedule), "ema": _plain(recipe.ema),
        "augment": _plain(aug.spec), "stages": _plain(aug.stages), "switch_epoch": recipe.switch_epoch,
    }))


def _built(recipe, epochs: int) -> dict:
    """What the engine builders make of the recipe's specs (a 2-parameter-group model, 16 images/step)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(model, recipe.optimizer, total_batch=16)
    sched = build_schedule(recipe.schedule, epochs=epochs, iters_per_epoch=50)
    ema = build_ema(model, recipe.ema)
    groups = [{k: _plain(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    out = {"optimizer": {"class": type(opt).__name__, "groups": groups}, "schedule": _plain(sched),
           "ema": None if ema is None else {"class": type(ema).__name__,
                                            **{k: v for k, v in vars(ema).items() if isinstance(v, float)}}}
    return json.loads(json.dumps(out))


# Deliberate changes since the fixture (issue 25, learn like the reference): every schedule names its
# warm-up start factor and shape; SpineNet's warm-up starts at 0.0067·lr (tensorflow/models); YOLOv3-ASFF's
# is the 5-epoch progress⁴ burn-in and its decay waits until epoch 20 of 300 (flat_cosine).
WARMUP_SINCE_ISSUE25 = {"rtmdet": (1e-5, 1.0), "rtmdet_ins": (1e-5, 1.0), "yolov6": (0.0, 1.0),
                        "retinanet": (0.0067, 1.0), "yolov3_asff": (0.0, 4.0), "plain": (0.0, 1.0)}


def _expected(key: str, recipe: str) -> dict:
    """The fixture's values under ``key`` with the issue-25 schedule changes applied."""
    expected = json.loads(json.dumps(FIXTURE["values"][key]))
    expected["optimizer"].setdefault("repopt_scales", None)  # added with RepOpt (None: no hyper-search scales)
    start, power = WARMUP_SINCE_ISSUE25[recipe]
    name = "flat_cosine" if recipe == "yolov3_asff" else expected["schedule"]["name"]
    expected["schedule"].update(warmup_start=start, warmup_power=power, name=name)
    if "built" in expected:
        expected["built"]["schedule"].update(warmup_start=start, warmup_power=power, name=name)
    return expected


def _recipe(model: str, recipe: str, image_size: int, epochs: int):
    size = detmodels.get_model_entry(model).size
    return build_recipe(RecipeConfig(name=recipe), size=size, image_size=image_size, epochs=epochs)


@pytest.mark.parametrize("key", sorted(FIXTURE["own"]))
def test_own_recipe_matches_pre_redesign_values(key):
    model, image_size, epochs = key.split("/")
    name = detmodels.get_model_entry(model).recipe
    expected = _expected(FIXTURE["own"][key], name)
    recipe = _recipe(model, name, int(image_size), int(epochs))
    got = _resolved(recipe)
    assert got == {k: expected[k] for k in got}
    assert _built(recipe, int(epochs)) == expected["built"]


def _cross_expected(model: str, recipe: str) -> str:
    """Before issue 18, ``recipe: rtmdet`` on rtmdet_ins_x meant RTMDet-Ins-x's lr (model-name
    sniffing); that is now the ``rtmdet_ins`` recipe, and ``rtmdet`` is RTMDet's (rtmdet_x's)."""
    if (model, recipe) == ("rtmdet_ins_x", "rtmdet"):
        return FIXTURE["cross"]["rtmdet_x/rtmdet"]
    return FIXTURE["cross"][f"{model}/{recipe}"]


@pytest.mark.parametrize("key", sorted(FIXTURE["cross"]))
def test_every_recipe_on_every_model_matches_pre_redesign_values(key):
    model, recipe = key.split("/")
    expected = _expected(_cross_expected(model, recipe), recipe)
    got = _resolved(_recipe(model, recipe, 640, 300))
    assert got == {k: expected[k] for k in got}


def test_rtmdet_ins_x_owns_the_papers_lr_and_batch():
    old = _expected(FIXTURE["cross"]["rtmdet_ins_x/rtmdet"], "rtmdet_ins")
    new = _resolved(_recipe("rtmdet_ins_x", "rtmdet_ins", 640, 300))
    assert new == {k: old[k] for k in new}
    assert (new["optimizer"]["lr"], new["optimizer"]["base_batch"]) == (0.002, 128)
    other = _resolved(_recipe("rtmdet_ins_l", "rtmdet_ins", 640, 300))["optimizer"]
    assert (other["lr"], other["base_batch"]) == (0.004, 256)


def test_every_model_in_the_fixture_and_every_entry_recipe_has_rows():
    models = set(detmodels.list_models())
    assert {k.split("/")[0] for k in FIXTURE["own"]} <= models  # the 27 variants registered before issue 18
    for name in models:
        entry = detmodels.get_model_entry(name)
        assert entry.recipe in RECIPE_NAMES
        assert _recipe(name, entry.recipe, 320, 30).optimizer.name in ("adamw", "sgd")
    assert {name for name, _ in ENGINE_RECIPES} == set(RECIPE_NAMES)
    assert {name for name, _ in AUGMENT_RECIPES} == set(RECIPE_NAMES)
    assert all((name, "any") in ENGINE_RECIPES and (name, "any") in AUGMENT_RECIPES for name in RECIPE_NAMES)
