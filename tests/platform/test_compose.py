"""One typed composition: ``compose(TrainConfig, base, *overlays)`` for ``--set``, workflow steps,
sweep trials and NAS trials; sweep spaces checked against the model's family before Ray starts."""
from __future__ import annotations

import pytest
import yaml

from detflow.config import TrainConfig
from detflow.config.compose import Layer, compose, parse_config, set_layers
from detflow.errors import ConfigError

DATA = {"train": {"annotations": "t.json", "images": "img"}, "image_size": 64}
YOLO = {"kind": "train", "name": "y", "model": {"name": "yolov6_n"}, "data": DATA, "train": {"epochs": 3, "batch_size": 4}}
RTM = {"kind": "train", "name": "r", "model": {"name": "rtmdet_tiny", "neck": {"expand_ratio": 0.75}}, "data": DATA}


def _errors(fn, *args) -> list[str]:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return info.value.errors


# ------------------------------------------------------------------------------------ overlays
def test_overlay_mapping_sets_only_its_fields_nested_sections_merge_field_by_field():
    cfg = compose(TrainConfig, Layer(YOLO, "y.yaml"), Layer({"train": {"epochs": 7}, "scaling.workers": 2}, "o"))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.scaling.workers) == (7, 4, 2)
    assert cfg.scaling.cpus_per_worker == 1  # untouched default
    assert cfg.data.image_size == 64 and cfg.name == "y"


def test_overlay_config_contributes_only_the_fields_the_user_set():
    partial = TrainConfig.model_validate({"model": {"name": "yolov6_n"}, "data": DATA, "train": {"epochs": 9}})
    assert partial.train.batch_size == 8  # its (unset) default ...
    cfg = compose(TrainConfig, Layer(YOLO, "y.yaml"), Layer(partial, "partial"))
    assert cfg.train.epochs == 9 and cfg.train.batch_size == 4  # ... does not override the base's 4
    assert cfg.name == "y"


def test_base_can_be_a_validated_config_and_result_is_validated_once():
    base = compose(TrainConfig, Layer(YOLO, "y.yaml"))
    cfg = compose(TrainConfig, Layer(base, "base"), {"model.assigner.tal_topk": 9})
    assert cfg.model.assigner.tal_topk == 9 and cfg.model.head.reg_max == 0
    assert base.model.assigner.tal_topk == 13  # the base is not modified


def test_error_names_the_layer_that_set_the_value_and_the_value():
    errors = _errors(compose, TrainConfig, Layer(YOLO, "y.yaml"), Layer({"train": {"epochs": 0}}, "step 'train' (with)"))
    assert errors == ["step 'train' (with): train.epochs: expected an integer > 0, got 0"]
    errors = _errors(compose, TrainConfig, Layer({**YOLO, "train": {"epochs": "ten"}}, "y.yaml"), {"scaling.workers": 2})
    assert errors == ["y.yaml: train.epochs: expected an integer > 0, got 'ten'"]


# --------------------------------------------------------------------------------------- --set
def test_set_on_a_nested_family_field():
    cfg = parse_config(TrainConfig, YOLO, "y.yaml", ["model.assigner.tal_topk=9", "train.optimizer.lr=0.01"])
    assert cfg.model.assigner.tal_topk == 9 and cfg.train.optimizer.lr == 0.01
    errors = _errors(parse_config, TrainConfig, YOLO, "y.yaml", ["model.assigner.soft_center_alpha=5"])
    assert len(errors) == 1
    assert errors[0].startswith("y.yaml (with --set model.assigner.soft_center_alpha=5): "
                                "model.assigner.soft_center_alpha: unknown key")
    assert "tal_topk" in errors[0] and "tal_alpha" in errors[0]  # the family's assigner fields


def test_set_layers_are_one_per_override_in_order():
    layers = set_layers(["train.epochs=2", "train.epochs=5"], "f.yaml")
    assert [l.values for l in layers] == [{"train.epochs": 2}, {"train.epochs": 5}]
    assert compose(TrainConfig, Layer(YOLO, "f.yaml"), *layers).train.epochs == 5


# ------------------------------------------------------------------------------ family changes
def test_dotted_model_name_into_another_family_is_refused_naming_the_options():
    errors = _errors(parse_config, TrainConfig, RTM, "r.yaml", ["model.name=yolov6_n"])
    assert len(errors) == 1 and "model.name: 'yolov6_n' is a yolov6 model" in errors[0]
    assert "model.neck" in errors[0] and "give the whole model section" in errors[0]


def test_whole_model_section_of_another_family_replaces_the_base_section():
    cfg = parse_config(TrainConfig, RTM, "r.yaml", ["model={name: yolov6_n, assigner: {tal_topk: 7}}"])
    assert cfg.model.name == "yolov6_n" and cfg.model.assigner.tal_topk == 7
    # and a name-only model section of a family without options set below is fine as a dotted key
    assert parse_config(TrainConfig, YOLO, "y.yaml", ["model.name=rtmdet_tiny"]).model.name == "rtmdet_tiny"


def test_renaming_within_a_family_does_not_carry_the_old_variants_defaults():
    base = compose(TrainConfig, Layer(YOLO, "y.yaml"), {"model.assigner.tal_topk": 9})  # validated: n's defaults filled in
    cfg = compose(TrainConfig, Layer(base, "base"), {"model.name": "yolov6_m"})
    assert cfg.model.head.reg_max == 16 and cfg.model.head.iou_loss == "giou"  # yolov6_m's, not yolov6_n's
    assert cfg.model.assigner.tal_topk == 9  # what the user set is kept


# ---------------------------------------------------------------------------------- trials
def test_trial_values_are_an_overlay_named_after_the_trial():
    from detflow.tune.space import apply_trial

    base = compose(TrainConfig, Layer(YOLO, "y.yaml"))
    cfg = apply_trial(Layer(base, "y.yaml"), ["train.batch_size=2"], {"model.assigner.tal_topk": 11}, "sweep s, trial t1")
    assert cfg.model.assigner.tal_topk == 11 and cfg.train.batch_size == 2 and cfg.train.epochs == 3
    errors = _errors(apply_trial, Layer(base, "y.yaml"), [], {"model.assigner.tal_topk": 0}, "sweep s, trial t2")
    assert errors[0].startswith("sweep s, trial t2: model.assigner.tal_topk:")


def _sweep_files(tmp_path, space: dict):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(YOLO))
    sweep = {"kind": "sweep", "name": "s", "base": "base.yaml", "space": space, "storage": str(tmp_path / "sweeps")}
    from detflow.tune.config import SweepConfig

    return parse_config(SweepConfig, sweep, "s.yaml")


def test_sweep_space_naming_a_knob_the_family_lacks_is_refused_before_ray_starts(tmp_path):
    import ray

    from detflow.tune.runner import run_sweep

    assert not ray.is_initialized()
    cfg = _sweep_files(tmp_path, {"model.assigner.soft_center_alpha": {"uniform": [5, 20]}})
    with pytest.raises(ConfigError) as info:
        run_sweep(cfg, config_dir=tmp_path)
    errors = info.value.errors
    assert not ray.is_initialized()
    assert len(errors) == 1 and errors[0].startswith(
        "sweep 's': space.model.assigner.soft_center_alpha: not a training-config field of yolov6_n (yolov6)")
    assert "yolov6 fields of model.assigner: tal_topk, tal_alpha, tal_beta" in errors[0]


def test_sweep_space_of_the_familys_own_knob_is_accepted(tmp_path):
    from detflow.tune.runner import _validate

    cfg = _sweep_files(tmp_path, {"model.assigner.tal_topk": {"int": [5, 15]}, "train.epochs": 2})
    base = _validate(cfg, yaml.safe_load((tmp_path / "base.yaml").read_text()), "base.yaml")
    assert base.model.name == "yolov6_n" and base.train.epochs == 3
    bad = _sweep_files(tmp_path, {"model.assigner.tal_topk": {"int": [0, 15]}})  # a range end TrainConfig refuses
    errors = _errors(_validate, bad, yaml.safe_load((tmp_path / "base.yaml").read_text()), "base.yaml")
    assert errors[0].startswith("sweep 's': space.model.assigner.tal_topk=0: model.assigner.tal_topk:")


def test_space_over_model_names_checks_every_family():
    from detflow.tune.config import ParamSpec
    from detflow.tune.space import space_model_names, validate_space_paths

    space = {"model.name": ParamSpec(choice=["rtmdet_tiny", "yolov6_n"]), "model.neck.expand_ratio": ParamSpec(fixed=0.5)}
    names = space_model_names(space, "rtmdet_tiny")
    assert names == ["rtmdet_tiny", "yolov6_n"]
    errors = _errors(validate_space_paths, space, "s.yaml", names)
    assert len(errors) == 1 and "space.model.neck.expand_ratio: not a training-config field of yolov6_n" in errors[0]


# -------------------------------------------------------------------------------- workflow steps
WORKFLOW = """\
kind: workflow
name: wf
defaults: {model: rtmdet_tiny, image_size: 96, scaling: {workers: 2}}
steps:
  - id: train
    uses: train
    with:
      data: {train: {annotations: t.json, images: img}}
      train: {epochs: 2}
      SECTION: {every: 1, keep_last: 3}
"""


def test_workflow_step_uses_trainconfig_section_names(tmp_path):
    from detflow.workflows.lint import load_workflow

    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW.replace("SECTION", "checkpoint"))
    assert load_workflow(path).step("train").with_.checkpoint.keep_last == 3
    path.write_text(WORKFLOW.replace("SECTION", "checkpointing"))
    with pytest.raises(ConfigError) as info:
        load_workflow(path)
    assert any("`with` key 'checkpointing' is now 'checkpoint' (the TrainConfig section name); "
               "fix: rename it to `checkpoint:`" in e for e in info.value.errors), info.value.errors


def test_step_with_sections_compose_over_the_config_file_and_defaults(tmp_path):
    from detflow.workflows.context import StepContext
    from detflow.workflows.schema import TrainParams
    from detflow.workflows.steps.train import build_train_config

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**RTM, "train": {"epochs": 9, "batch_size": 3},
                                                         "checkpoint": {"every": 2}}))
    ctx = StepContext(run_id="r1", step_id="train", kind="train", workflow="wf", storage=str(tmp_path / "st"),
                      defaults={"model": "rtmdet_tiny", "image_size": 96, "scaling": {"workers": 2}})
    params = TrainParams.model_validate({"config": str(tmp_path / "base.yaml"), "train": {"epochs": 2},
                                         "checkpoint": {"keep_last": 5}})
    cfg = build_train_config(params, ctx)
    assert (cfg.train.epochs, cfg.train.batch_size) == (2, 3)  # with: over the file, field by field
    assert (cfg.checkpoint.every, cfg.checkpoint.keep_last) == (2, 5)
    assert cfg.data.image_size == 96 and cfg.scaling.workers == 2  # the workflow defaults
    assert cfg.model.neck.expand_ratio == 0.75  # the file's option survives `defaults: {model: rtmdet_tiny}`
    assert cfg.name == "train" and cfg.experiment == "wf" and cfg.storage == ctx.uri("runs")
    assert cfg.distill is None


def test_workflow_sweep_step_space_is_checked_by_lint(tmp_path):
    from detflow.workflows.lint import load_workflow

    text = """\
kind: workflow
name: wf
defaults: {model: yolov6_n, data: {train: {annotations: t.json, images: img}}}
steps:
  - id: sweep
    uses: sweep
    with:
      space: {KEY: {int: [5, 15]}}
"""
    path = tmp_path / "wf.yaml"
    path.write_text(text.replace("KEY", "model.assigner.tal_topk"))
    assert "model.assigner.tal_topk" in load_workflow(path).step("sweep").with_.space
    path.write_text(text.replace("KEY", "model.assigner.topk"))
    with pytest.raises(ConfigError) as info:
        load_workflow(path)
    assert any("step 'sweep': space.model.assigner.topk: not a training-config field of yolov6_n (yolov6); "
               "did you mean model.assigner.tal_topk" in e for e in info.value.errors), info.value.errors


def test_nas_proxy_trial_is_an_overlay_of_the_composed_base(tmp_path):
    from detflow.data import generate_synthetic
    from detflow.archsearch.config import NasConfig
    from detflow.archsearch.runner import _base_config, _proxy_data
    from detflow.archsearch.trial import proxy_config

    synth = generate_synthetic(tmp_path / "data", num_images=6, image_size=64, seed=0, val_fraction=0.34)
    base = {"kind": "train", "name": "sn", "model": {"name": "spinenet_49s"}, "train": {"epochs": 9, "batch_size": 3},
            "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)}, "image_size": 128}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    cfg = NasConfig(name="n", base="base.yaml", overrides=["train.batch_size=2"], resources={"workers": 1},
                    proxy={"image_size": 64, "epochs": 2, "max_steps_per_epoch": 1})
    base_cfg, base_path = _base_config(cfg, tmp_path)
    assert base_cfg.train.batch_size == 2  # the search's --set overrides, composed once
    data = _proxy_data(cfg, base_cfg, base_path, tmp_path / "exp")
    trial = proxy_config(cfg, base_cfg, tmp_path / "arch.yaml", data, "n-t3", str(tmp_path / "exp" / "trials"))
    assert (trial.name, trial.model.name, trial.model.spec) == ("n-t3", "spinenet", str(tmp_path / "arch.yaml"))
    assert (trial.data.image_size, trial.train.epochs, trial.train.eval_interval) == (64, 2, 1)
    assert trial.train.batch_size == 2 and trial.train.max_steps_per_epoch == 1
    assert trial.data.val is not None and trial.data.train.annotations != str(synth.train_json)  # the held-out split
    bad = NasConfig(name="n", base="base.yaml", overrides=["model.neck.expand_ratio=0.5"])
    errors = _errors(_base_config, bad, tmp_path)
    assert errors[0].startswith(f"{tmp_path / 'base.yaml'} (with --set model.neck.expand_ratio=0.5): model.neck")


def test_a_dumped_config_of_another_model_does_not_impose_its_default_recipe():
    teacher = compose(TrainConfig, Layer(RTM, "r.yaml")).model_dump(mode="json")  # e.g. a checkpoint's config.yaml
    assert teacher["recipe"]["name"] == "rtmdet"
    student = compose(TrainConfig, Layer(teacher, "teacher"), Layer({"model": {"name": "yolov6_s"}}, "step (with)"))
    assert student.model.name == "yolov6_s" and student.recipe.name == "yolov6"
    chosen = compose(TrainConfig, Layer({**RTM, "recipe": {"name": "plain"}}, "r.yaml"), {"model": {"name": "yolov6_s"}})
    assert chosen.recipe.name == "plain"  # a recipe the user chose stays
