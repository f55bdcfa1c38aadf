"""`detflow config validate` and the config error format: FILE: dotted.path: expected …, got …."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from torch import nn

import detmodels
from detflow.cli import main
from detflow.config import TrainConfig, parse_config
from detflow.errors import ConfigError
from detmodels import registry

VALID = """\
name: unit
model: {name: cfgtest_tiny}
data:
  train: {annotations: train.json, images: images}
  image_size: 128
train: {epochs: 2, batch_size: 2}
kind: train
"""


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    """A registered model name for configs to refer to, removed after the test."""
    entry = registry.ModelEntry("cfgtest_tiny", "cfgtest", "bbox", 32, lambda num_classes=80, **kw: nn.Conv2d(3, 4, 3))
    detmodels.list_models()  # load the real families first so they do not re-register later
    monkeypatch.setitem(registry._REGISTRY, "cfgtest_tiny", entry)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path, text):
    path.write_text(text)
    return path.name


def _run(capsys, *args):
    code = main(["config", "validate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_valid_config_prints_ok(in_tmp, capsys):
    _write(in_tmp / "train.yaml", VALID)
    assert _run(capsys, "train.yaml") == (0, "ok\n", "")


def test_wrong_type_message_is_exact(in_tmp, capsys):
    _write(in_tmp / "train.yaml", VALID.replace("epochs: 2", "epochs: ten"))
    code, out, err = _run(capsys, "train.yaml")
    assert code == 2 and out == ""
    assert err.splitlines() == ["train.yaml: train.epochs: expected an integer > 0, got 'ten'"]


def test_several_errors_one_per_line_with_did_you_mean(in_tmp, capsys):
    text = VALID.replace("epochs: 2", "epohcs: 2").replace("image_size: 128", "image_size: 128\n  num_workers: -1")
    _write(in_tmp / "train.yaml", text)
    code, _, err = _run(capsys, "train.yaml")
    assert code == 2
    assert sorted(err.splitlines()) == [
        "train.yaml: data.num_workers: expected an integer >= 0, got -1",
        "train.yaml: train.epohcs: unknown key; did you mean 'epochs'?",
    ]


def test_unknown_key_without_close_match_and_missing_value(in_tmp, capsys):
    _write(in_tmp / "train.yaml", VALID.replace("name: unit\n", "colour: red\n").replace(
        "  train: {annotations: train.json, images: images}\n", "  train: {annotations: train.json}\n"))
    code, _, err = _run(capsys, "train.yaml")
    assert code == 2
    assert sorted(err.splitlines()) == [
        "train.yaml: colour: unknown key; expected one of: kind, name, model, data, recipe, train, scaling, "
        "checkpoint, distill, storage, experiment",
        "train.yaml: data.train.images: missing required value"]


def test_yaml_syntax_error(in_tmp, capsys):
    _write(in_tmp / "train.yaml", "model: {name: cfgtest_tiny\ndata: [\n")
    code, _, err = _run(capsys, "train.yaml")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("train.yaml: line ") and "invalid YAML" in err


def test_missing_file_and_unknown_kind(in_tmp, capsys):
    code, _, err = _run(capsys, "nope.yaml")
    assert code == 2 and err.startswith("nope.yaml: cannot read")
    _write(in_tmp / "other.yaml", "foo: 1\n")
    code, _, err = _run(capsys, "other.yaml")
    assert code == 2 and "other.yaml: (top level): missing 'kind'" in err  # more in test_kinds.py


def test_overrides_and_print_config(in_tmp, capsys):
    _write(in_tmp / "train.yaml", VALID)
    code, out, _ = _run(capsys, "train.yaml", "--set", "train.epochs=5", "--set", "train.optimizer.lr=0.004",
                        "--print-config")
    assert code == 0 and out.splitlines()[-1] == "ok" and out.startswith("# kind: train")
    resolved = yaml.safe_load(out.rsplit("ok", 1)[0])
    assert resolved["train"]["epochs"] == 5 and resolved["train"]["optimizer"]["lr"] == 0.004
    assert resolved["train"]["batch_size"] == 2  # from the file
    assert resolved["scaling"]["workers"] == 1  # a default, filled in


def test_invalid_overrides(in_tmp, capsys):
    _write(in_tmp / "train.yaml", VALID)
    code, _, err = _run(capsys, "train.yaml", "--set", "train.epochs=-1")
    assert code == 2
    assert err.splitlines() == ["train.yaml (with --set train.epochs=-1): train.epochs: expected an integer > 0, got -1"]
    code, _, err = _run(capsys, "train.yaml", "--set", "train.epochs")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = _run(capsys, "train.yaml", "--set", "train.epoch=3")
    assert code == 2 and "did you mean 'epochs'?" in err


def test_bound_wording_in_library_errors():
    data = yaml.safe_load(VALID)
    data["train"].update(score_thr=2, nms_iou="x", grad_clip=0)
    with pytest.raises(ConfigError) as info:
        parse_config(TrainConfig, data, "t.yaml")
    assert sorted(info.value.errors) == [
        "t.yaml: train.grad_clip: expected a number > 0, got 0",
        "t.yaml: train.nms_iou: expected a number > 0 and <= 1, got 'x'",
        "t.yaml: train.score_thr: expected a number >= 0 and <= 1, got 2",
    ]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "workflows" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_training_configs_validate(path):
    from detflow.config.compose import load_config

    cfg = load_config(TrainConfig, path)
    assert cfg.model.name in detmodels.list_models() and cfg.data.image_size > 0


def test_duplicate_key_is_exit_2_naming_both_lines(in_tmp, capsys):
    _write(in_tmp / "train.yaml", VALID.replace("train: {epochs: 2, batch_size: 2}",
                                                "train:\n  epochs: 2\n  batch_size: 2\n  epochs: 3"))
    code, out, err = _run(capsys, "train.yaml")
    assert code == 2 and out == ""
    assert err.splitlines() == ["train.yaml:9: duplicate key 'epochs' (first at line 7)"]
