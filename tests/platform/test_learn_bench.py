"""``detflow bench learn``: val mAP50 against wall time of a time-budgeted training (issue 25).

The CLI runs are real (synthetic data, local Ray, MLflow, pycocotools) at a tiny budget; the planning
and the family-config lookup are checked directly.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detflow.bench.learn_bench import LearnPoint, LearnResult, ProbeResult, family_config, plan_epochs
from detflow.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "workflows" / "configs"
ROW = re.compile(r"^\| (\d+):(\d\d) \| (\d+) \| ([0-9.]+|–) \| ([0-9.]+|–) \|")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ input errors
def test_unknown_model_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    code, out, err = _cli(capsys, "bench", "learn", "--model", "rtmdet_tyni", "--minutes", "0.5")
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert "--model" in err and "'rtmdet_tyni'" in err and "rtmdet_tiny" in err
    assert not (tmp_path / "home" / "bench").exists()  # refused before any data is written


def test_eval_every_s_and_eval_interval_together_are_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    code, _, err = _cli(capsys, "bench", "learn", "--model", "rtmdet_tiny", "--eval-every-s", "30",
                        "--eval-interval", "2")
    assert code == 2 and err.strip().count("\n") == 0
    assert "--eval-every-s 30" in err and "--eval-interval 2" in err


# ------------------------------------------------------------------------------ plan and config lookup
def test_plan_fits_the_budget_and_spaces_evaluations_by_seconds():
    probe = ProbeResult(step_s=1.0, steps_per_epoch=50, eval_s=10.0)  # 51 s epochs with the 1 s overhead
    epochs, interval = plan_epochs(1200.0, probe, eval_every_s=150.0, startup_s=20.0, epoch_overhead_s=1.0)
    assert interval == 3  # 150 s / 51 s
    assert epochs == round((1200 - 20) / (51 + 10 / 3)) == 22
    # an explicit interval wins; a budget shorter than the start-up still trains one epoch
    assert plan_epochs(1200.0, probe, eval_interval=1, startup_s=20.0, epoch_overhead_s=1.0) == (19, 1)
    assert plan_epochs(5.0, probe, startup_s=20.0) == (1, 1)


@pytest.mark.parametrize("model, expected", [
    ("rtmdet_tiny", "rtmdet_tiny_synth.yaml"), ("rtmdet_s", "rtmdet_tiny_synth.yaml"),
    ("rtmdet_ins_s", "rtmdet_ins_tiny_synth.yaml"), ("yolov6_s", "yolov6_n_synth.yaml"),
    ("spinenet_49", "spinenet_49s_synth.yaml"), ("yolov3", "yolov3_asff_synth.yaml")])
def test_family_config_is_the_model_s_or_its_family_s_synth_config(model, expected):
    found = family_config(model, [CONFIGS])
    assert found is not None and found.name == expected


def test_no_family_config_means_recipe_defaults(tmp_path):
    (tmp_path / "other_synth.yaml").write_text("kind: train\nmodel: {name: yolov6_n}\n")
    assert family_config("rtmdet_tiny", [tmp_path]) is None


def test_final_and_at_budget_figures():
    points = [LearnPoint(1, 50.0, 1.0, 0.2), LearnPoint(2, 90.0, 0.8, None), LearnPoint(3, 130.0, 0.7, 0.6)]
    result = LearnResult("rtmdet_tiny", "bbox", "x.yaml", 100.0, 24, 6, 64, 1, 3, 1, None, points, 140.0, 0.0,
                         "run", "out")
    assert result.final().epoch == 3 and result.at_budget().epoch == 1
    assert "within the budget: bbox mAP50 0.200 at 0:50" in result.summary()
    assert "bbox mAP50 at 0:25 / 0:50 / 1:15 / 1:40: – / 0.200 / 0.200 / 0.200" in result.summary()
    assert result.to_dict()["bbox_mAP50_at_quarters"][0] == {"elapsed_s": 25.0, "bbox_mAP50": None}
    rows = [ROW.match(line) for line in result.to_markdown().splitlines()]
    assert [m.group(3) for m in rows if m] == ["1", "2", "3"]


# ------------------------------------------------------------------------------ the CLI, for real
def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "detflow", "bench", "learn", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _elapsed_increasing(values: list[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


@pytest.mark.slow
def test_cli_tiny_budget_prints_table_and_json(cli_env, tmp_path):
    common = ["--model", "rtmdet_tiny", "--images", "24", "--image-size", "64", "--workers", "1",
              "--data", str(tmp_path / "data")]
    proc = _run([*common, "--minutes", "0.5", "--eval-interval", "1", "--out", str(tmp_path / "out")], cli_env)
    rows = [m for m in map(ROW.match, proc.stdout.splitlines()) if m]
    saved = json.loads((tmp_path / "out" / "learn.json").read_text())
    assert "| elapsed | epoch | train loss | val bbox mAP50 |" in proc.stdout
    assert len(rows) == saved["epochs"] >= 1  # every planned epoch is a row, each evaluated (interval 1)
    assert all(0.0 <= float(m.group(5)) <= 1.0 for m in rows)
    assert _elapsed_increasing([int(m.group(1)) * 60 + int(m.group(2)) + 0.0 for m in rows]) or len(rows) == 1
    assert re.search(r"^final: bbox mAP50 [0-9.]+ at \d+:\d\d \(epoch \d+\)", proc.stdout, re.MULTILINE)
    assert saved["probe"]["step_s"] > 0 and saved["config"].endswith("rtmdet_tiny_synth.yaml")
    assert (tmp_path / "out" / "learn_curve.png").stat().st_size > 1000

    # --json: one JSON object on stdout; a fixed epoch count skips the probe; the data set is reused
    proc = _run([*common, "--epochs", "2", "--eval-interval", "1", "--json", "--out", str(tmp_path / "out2")],
                cli_env)
    result = json.loads(proc.stdout)
    points = result["points"]
    assert result["probe"] is None and [p["epoch"] for p in points] == [1, 2]
    assert _elapsed_increasing([p["elapsed_s"] for p in points]) and points[0]["elapsed_s"] > 0
    assert all(0.0 <= p["bbox_mAP50"] <= 1.0 for p in points)
    assert result["final"]["epoch"] == 2 and result["final"]["bbox_mAP50"] == points[-1]["bbox_mAP50"]
