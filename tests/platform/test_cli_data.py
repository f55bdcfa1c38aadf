"""``detflow data synth`` / ``detflow data check``: outputs and exit codes through detflow.cli.main."""
from __future__ import annotations

import json

import pytest

from detflow.cli import main


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_synth")
    assert main(["data", "synth", "--out", str(out), "--images", "5", "--image-size", "64", "--seed", "2",
                 "--classes", "3", "--val-fraction", "0.4"]) == 0
    return out


def test_synth_writes_dataset(synth_dir, capsys):
    train = json.loads((synth_dir / "train.json").read_text())
    val = json.loads((synth_dir / "val.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert len(train["categories"]) == 3
    assert len(list((synth_dir / "images").glob("*.jpg"))) == 5


def test_synth_reports_paths(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--images", "2", "--image-size", "48"]) == 0
    out = capsys.readouterr().out
    assert f"train: {tmp_path / 'train.json'}" in out and "val:" in out


def test_synth_bad_argument_exits_2(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--classes", "0"]) == 2
    err = capsys.readouterr().err
    assert "--classes: expected an integer in [1, 8], got 0" in err and len(err.strip().splitlines()) == 1


def test_check_ok(synth_dir, capsys):
    assert main(["data", "check", str(synth_dir / "train.json"), "--images", str(synth_dir / "images")]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")


def test_check_json(synth_dir, capsys):
    assert main(["data", "check", str(synth_dir / "val.json"), "--images", str(synth_dir / "images"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["counts"]["images"] == 2 and report["errors"] == []


def test_check_errors_exit_2(synth_dir, tmp_path, capsys):
    data = json.loads((synth_dir / "train.json").read_text())
    data["annotations"][0]["category_id"] = 77
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main(["data", "check", str(bad), "--images", str(synth_dir / "images"), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and "unknown category_id" in report["errors"][0]
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and str(bad) in err_lines[0] and "unknown category_id" in err_lines[0]


def test_check_not_json_exits_2(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("nope")
    assert main(["data", "check", str(bad), "--images", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for cmd in (["data", "synth", "--help"], ["data", "check", "--help"]):
        assert main(cmd) == 0
        assert "Example: detflow data" in capsys.readouterr().out
