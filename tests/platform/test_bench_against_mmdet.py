"""``detflow bench data|step|infer --against mmdet``: the missing-venv error, the detflow side of the
training step, and a real (tiny) side-by-side run against mmdetection 3.3 in its own venv.

The mmdet venv is made once by ``scripts/bench/setup_mmdet.sh`` in a cache directory reused across
runs (``$DETFLOW_TEST_MMDET_VENV``, default ``~/.cache/detflow/mmdet-venv``): about 45 s the first
time (CPU torch from the local wheel cache), nothing afterwards (the script's marker file).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from detflow.bench.against_mmdet import AgainstResult, check_mmdet_venv
from detflow.bench.detflow_side import run_step, write_tensors
from detflow.cli import main
from detflow.errors import UserInputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mmdet_venv() -> Path:
    venv = Path(os.environ.get("DETFLOW_TEST_MMDET_VENV") or Path.home() / ".cache" / "detflow" / "mmdet-venv")
    subprocess.run(["bash", str(ROOT / "scripts" / "bench" / "setup_mmdet.sh"), str(venv)], check=True,
                   capture_output=True, text=True)
    return venv


@pytest.mark.parametrize("bench", [["step"], ["data", "--images", "8"], ["infer"]])
def test_missing_venv_is_one_line_exit_2(bench, tmp_path, capsys):
    venv = tmp_path / "no-venv"
    assert main(["bench", *bench, "--against", "mmdet", "--mmdet-venv", str(venv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(venv) in err and "scripts/bench/setup_mmdet.sh" in err


def test_a_half_made_venv_is_refused(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")  # no marker: setup_mmdet.sh did not finish
    with pytest.raises(UserInputError, match="setup_mmdet.sh"):
        check_mmdet_venv(tmp_path)


def test_unknown_against_is_exit_2(capsys):
    assert main(["bench", "step", "--against", "detectron2"]) == 2
    assert "detectron2" in capsys.readouterr().err


def test_tensors_are_deterministic_and_in_range(tmp_path):
    a = dict(np.load(write_tensors(tmp_path / "a.npz", batch=2, image_size=64, seed=3)))
    b = dict(np.load(write_tensors(tmp_path / "b.npz", batch=2, image_size=64, seed=3)))
    assert all((a[k] == b[k]).all() for k in a) and a["images"].shape == (2, 3, 64, 64)
    boxes = a["boxes_1"]
    assert boxes.shape == (5, 4) and (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
    assert a["labels_0"].min() >= 0 and a["labels_0"].max() < 80


def test_detflow_step_gives_finite_positive_times(tmp_path):
    tensors = write_tensors(tmp_path / "t.npz", batch=2, image_size=160)
    result = run_step(tensors, steps=2, warmup=1)
    for key in ("median_ms", "min_ms", "cpu_ms_per_run"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert result["min_ms"] <= result["median_ms"] and (result["batch"], result["image_size"]) == (2, 160)


def test_ratio_table_from_pairs():
    mmdet = {"median_ms": 200.0, "cpu_ms_per_run": 90.0}
    pairs = [{"detflow": {"median_ms": 100.0, "cpu_ms_per_run": 90.0}, "mmdet": mmdet},
             {"detflow": {"median_ms": 150.0, "cpu_ms_per_run": 90.0}, "mmdet": mmdet}]
    result = AgainstResult("step", {"batch": 4}, pairs, [1.0, 2.0])
    assert result.figures()[0]["ratio"] == [0.5, 0.75]
    assert "| training step, median | ms | 100.0–150.0 | 200.0 | 0.50–0.75 |" in result.to_markdown()


def test_real_side_by_side_step_data_and_infer(mmdet_venv, capsys):
    assert main(["bench", "step", "--against", "mmdet", "--mmdet-venv", str(mmdet_venv), "--image-size", "160",
                 "--batch", "2", "--steps", "3", "--warmup", "1", "--repeats", "1", "--json"]) == 0
    step = json.loads(capsys.readouterr().out)
    assert [p["mmdet"]["mmdet"] for p in step["pairs"]] == ["3.3.0"]
    for row in step["figures"]:
        assert all(v > 0 and math.isfinite(v) for v in row["detflow"] + row["mmdet"] + row["ratio"])
    assert main(["bench", "data", "--against", "mmdet", "--mmdet-venv", str(mmdet_venv), "--images", "8",
                 "--image-size", "160", "--repeats", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pair = data["pairs"][0]
    assert pair["mmdet"]["images"] == pair["detflow"]["images"] == 8
    assert pair["mmdet"]["dataset_images"] == pair["detflow"]["dataset_images"] == 8
    assert {row["figure"] for row in data["figures"]} >= {"stage 1 (CachedMosaic…CachedMixUp)", "ceiling, CPU"}
    for row in data["figures"]:
        assert all(v > 0 and math.isfinite(v) for v in row["detflow"] + row["mmdet"])
    assert main(["bench", "infer", "--mmdet-venv", str(mmdet_venv), "--image-size", "160", "--runs", "2",
                 "--repeats", "1", "--json"]) == 0
    infer = json.loads(capsys.readouterr().out)
    assert [(p["detflow"]["model"], p["mmdet"]["model"]) for p in infer["pairs"]] == [("rtmdet_tiny", "rtmdet_tiny")]
    assert all(v > 0 for row in infer["figures"] for v in row["detflow"] + row["mmdet"])
