"""``model:`` is typed per family: each family's distinctive knobs validate for it and are refused,
naming the field and listing the family's valid keys, for the others (``detflow config validate``)."""
from __future__ import annotations

import pytest
import yaml

import detmodels
from detflow.cli import main
from detflow.config import TrainConfig, field_paths, parse_config
from detflow.config.train import model_config_class
from detflow.errors import ConfigError


def _config(model: dict) -> dict:
    data = {"name": "unit", "model": model, "data": {"train": {"annotations": "train.json", "images": "images"}}}
    if "kind" in TrainConfig.model_fields:  # `kind: train` heads every config file (issue 18 item 5)
        data = {"kind": "train", **data}
    return data


def _validate(tmp_path, capsys, model: dict) -> tuple[int, str, str]:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_config(model), sort_keys=False))
    code = main(["config", "validate", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


ACCEPTED = [
    ("yolov6_n", "assigner", "tal_topk", 9),
    ("yolov6_n", "head", "dld", True),
    ("rtmdet_tiny", "neck", "expand_ratio", 0.75),
    ("rtmdet_ins_tiny", "assigner", "soft_center_alpha", 5.0),
    ("spinenet_49s", "head", "num_filters", 64),
    ("spinenet", "backbone", "filter_size_scale", 0.5),
    ("yolov3_asff", "head", "ignore_thr", 0.5),
    ("yolov3", "neck", "dropblock", True),
]

# (model, section, key, value, the valid keys the error lists for that family's section)
REFUSED = [
    ("yolov6_n", "assigner", "soft_center_alpha", 5, "tal_topk, tal_alpha, tal_beta, atss_topk, aat_topk"),
    ("yolov3", "neck", "expand_ratio", 0.5, "dropblock"),
    ("rtmdet_tiny", "head", "num_filters", 64, "loss_cls_weight, loss_bbox_weight, loss_mask_weight"),
    ("yolov6_s", "head", "ignore_thr", 0.5,
     "anchor_aided, dld, reg_max, iou_loss, temperature, distill_class_weight, distill_feat"),
    ("spinenet_49", "assigner", "tal_alpha", 1.0, "pos_iou_thr, neg_iou_thr, force_match"),
    ("yolov3_asff", "head", "num_filters", 64, "ignore_thr, label_smooth"),
]


@pytest.mark.parametrize("name,section,key,value", ACCEPTED)
def test_family_knob_validates(tmp_path, capsys, name, section, key, value):
    assert _validate(tmp_path, capsys, {"name": name, section: {key: value}}) == (0, "ok\n", "")


@pytest.mark.parametrize("name,section,key,value,valid", REFUSED)
def test_other_family_knob_is_refused_naming_the_field(tmp_path, capsys, name, section, key, value, valid):
    code, out, err = _validate(tmp_path, capsys, {"name": name, section: {key: value}})
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"{tmp_path / 'train.yaml'}: model.{section}.{key}: unknown key")
    assert line.endswith(f": {valid}") or line.endswith(f" {valid}")  # the family's own keys, in order


def test_a_section_the_family_lacks_lists_its_fields(tmp_path, capsys):
    code, _, err = _validate(tmp_path, capsys, {"name": "spinenet_49s", "neck": {"fpn": True}})
    assert code == 2
    assert "model.neck: unknown key" in err
    assert err.rstrip().endswith("name, num_classes, pretrained, spec, backbone, head, assigner")
    code, _, err = _validate(tmp_path, capsys, {"name": "rtmdet_tiny", "spec": "x.yaml"})
    assert code == 2 and "model.spec: unknown key" in err  # a spec is SpineNet's only
    code, _, err = _validate(tmp_path, capsys, {"name": "spinenet_49", "spec": "x.yaml"})
    assert code == 2 and "model.spec: expected null: only the 'spinenet' entry takes a spec, got 'x.yaml'" in err


def test_value_rule_is_the_options_one(tmp_path, capsys):
    code, _, err = _validate(tmp_path, capsys, {"name": "rtmdet_tiny", "assigner": {"soft_center_alpha": 0.5}})
    assert code == 2 and err.strip().endswith("model.assigner.soft_center_alpha: expected a number > 1, got 0.5")
    with pytest.raises(ValueError, match="soft_center_alpha: expected a number > 1, got 0.5"):
        detmodels.DSLOptions(soft_center_alpha=0.5)
    code, _, err = _validate(tmp_path, capsys, {"name": "yolov6_n", "head": {"iou_loss": "ciou"}})
    assert code == 2 and "model.head.iou_loss: expected one of 'siou' or 'giou', got 'ciou'" in err


def test_unknown_model_name_keeps_the_hint(tmp_path, capsys):
    code, _, err = _validate(tmp_path, capsys, {"name": "yolov6_nn"})
    assert code == 2 and "model.name: expected a registered model name (did you mean yolov6_n" in err


def test_validated_config_holds_the_variant_defaults_and_builds_its_options():
    cfg = parse_config(TrainConfig, _config({"name": "yolov6_m6", "assigner": {"tal_topk": 9}}))
    opts = cfg.model.options()
    assert isinstance(opts, detmodels.YOLOv6Options)
    assert opts.assigner.tal_topk == 9 and opts.atss_warmup_epochs == 4 and opts.head.reg_max == 16
    assert cfg.model.head.reg_max == 16  # the dump shows the values the model is built with
    again = parse_config(TrainConfig, cfg.model_dump(mode="json"))
    assert again.model.options() == opts
    assert cfg.model.create_kwargs() == {"options": opts}
    spine = parse_config(TrainConfig, _config({"name": "spinenet", "spec": "best.yaml"}))
    assert spine.model.create_kwargs()["spec"].endswith("best.yaml")


def test_yaml_options_reach_the_built_model():
    cfg = parse_config(TrainConfig, _config({"name": "rtmdet_tiny", "neck": {"expand_ratio": 0.25},
                                             "assigner": {"soft_center_alpha": 4.0, "topk": 9}}))
    model = cfg.model.build(num_classes=2)
    assert model.neck.top_down_blocks[0].main_conv.conv.out_channels == 48
    assert (model.assigner.soft_center_alpha, model.assigner.topk) == (4.0, 9)


def test_sweep_paths_come_from_the_family():
    yolo = field_paths(model_config_class("yolov6_n"), "model.")
    rtm = field_paths(model_config_class("rtmdet_tiny"), "model.")
    assert "model.assigner.tal_topk" in yolo and "model.assigner.soft_center_alpha" not in yolo
    assert "model.assigner.soft_center_alpha" in rtm and "model.neck.expand_ratio" in rtm
    assert "model.assigner.tal_topk" not in rtm
    with pytest.raises(KeyError, match="did you mean"):
        model_config_class("rtmdet_tny")


def test_every_family_option_path_is_a_config_path():
    for name in detmodels.list_models():
        entry = detmodels.get_model_entry(name)
        paths = set(field_paths(model_config_class(name)))
        assert set(detmodels.option_paths(entry.options)) <= paths, name


def test_a_parse_error_names_the_file():
    with pytest.raises(ConfigError, match=r"t\.yaml: model\.assigner\.soft_center_alpha: unknown key"):
        parse_config(TrainConfig, _config({"name": "yolov6_n", "assigner": {"soft_center_alpha": 5}}), "t.yaml")


def test_a_model_section_stored_before_typed_options_still_loads():
    legacy = {"name": "rtmdet_tiny", "num_classes": 3, "pretrained": None,
              "neck": {"expand_ratio": 0.75, "se": None, "ppm": None},
              "assigner": {"soft_center_alpha": None, "soft_center_beta": None, "topk": None, "iou_weight": None},
              "head": {}, "spec": None, "extra": {}}
    cfg = parse_config(TrainConfig, _config(legacy))
    assert cfg.model.options() == detmodels.variant_options("rtmdet_tiny", {"neck": {"expand_ratio": 0.75}})
    with pytest.raises(ConfigError, match=r"model\.extra: unknown key"):  # only the exact old layout
        parse_config(TrainConfig, _config({"name": "rtmdet_tiny", "extra": {"x": 1}}))


def test_generated_model_configs_pickle_by_reference_and_dump_without_warnings(tmp_path):
    """Ray ships a TrainConfig to its workers by pickling: the generated family classes must travel
    by name (a class pickled by value is, in another process, a stranger to the union's serializer,
    which then warns on every dump)."""
    import subprocess
    import sys

    import cloudpickle

    from detflow.config.train import TrainConfig

    names = ("rtmdet_tiny", "yolov6_n", "spinenet_49s", "yolov3_asff")
    cfgs = [TrainConfig.model_validate({"model": {"name": n}, "data": {"train": {"annotations": "a.json",
                                                                              "images": "img"}}}) for n in names]
    (tmp_path / "cfgs.pkl").write_bytes(cloudpickle.dumps(cfgs))
    check = ("import pickle, sys, warnings; warnings.simplefilter('error'); "
             "cfgs = pickle.loads(open(sys.argv[1], 'rb').read()); "
             "print(' '.join(c.model_dump()['model']['name'] for c in cfgs))")
    out = subprocess.run([sys.executable, "-c", check, str(tmp_path / "cfgs.pkl")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == list(names)
