"""``detflow bench search`` (ASHA + TPE vs TPE alone) and the per-trial bookkeeping it reports:
error lines, Tune overhead timing, the trial table. The end-to-end run is tiny (2 trials × 1 epoch)."""
import json
import subprocess
import sys
import types

import pytest

from detflow.bench.search_bench import SearchBenchResult, _row, search_bench_space
from detflow.tune.results import SweepResult
from detflow.tune.stats import error_line, median_overhead, read_trial_stats

RAY_TEXT = """Failure # 1 (occurred at 2026-11-21_15-12-19)
ray::ImplicitFunc.train() (pid=1, ip=1.2.3.4, repr=_trial_fn)
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
  File "platform/detflow/engine/loop.py", line 185, in train_step
    raise RuntimeFailure(f"non-finite loss at epoch {epoch} step {self.step}: {terms}")
detflow.errors.RuntimeFailure: non-finite loss at epoch 0 step 0: loss_cls=inf

The above exception was the direct cause of the following exception:
detflow.errors.RuntimeFailure: training run x failed: Training failed due to worker errors:
"""


def test_error_line_finds_the_root_cause_under_rays_wrappers():
    assert error_line(RAY_TEXT) == "detflow.errors.RuntimeFailure: non-finite loss at epoch 0 step 0: loss_cls=inf"
    died = "ray.exceptions.RayActorError: The actor died"
    assert error_line(died + "\n") == died
    assert error_line(ValueError("bad value")) == "ValueError: bad value"
    assert error_line(RuntimeError("")) == "RuntimeError"
    assert error_line(None) is None


def test_median_overhead_skips_trials_without_a_report():
    trials = [{"overhead_s": 3.0}, {"overhead_s": None}, {"overhead_s": 9.0}, {}, {"overhead_s": 4.0}]
    assert median_overhead(trials) == 4.0
    assert median_overhead([{"overhead_s": None}]) is None


def _trial(**kw):
    return types.SimpleNamespace(**{"trial_id": "abcde_00000", "error_file": None, "num_failures": 0, **kw})


def test_stats_callback_times_the_first_report_of_the_attempt_that_reported(tmp_path, monkeypatch):
    from detflow.tune import stats

    clock = iter([100.0, 130.0, 137.5, 200.0])
    monkeypatch.setattr(stats.time, "time", lambda: next(clock))
    err = tmp_path / "error.txt"
    err.write_text(RAY_TEXT)
    cb = stats.TrialStatsCallback(tmp_path)
    cb.setup()
    trial = _trial(error_file=str(err), num_failures=1)
    cb.on_trial_start(0, [], trial)                        # t=100: first attempt, crashes before reporting
    cb.on_trial_recover(0, [], trial)
    cb.on_trial_start(0, [], trial)                        # t=130: the retry
    cb.on_trial_result(0, [], trial, {"train/epoch_time_s": 2.5})   # t=137.5
    cb.on_trial_result(0, [], trial, {"train/epoch_time_s": 9.0})   # a later report changes nothing
    saved = read_trial_stats(tmp_path)["abcde_00000"]
    assert saved["attempts"] == 2 and saved["failures"] == 1
    assert saved["errors"] == ["detflow.errors.RuntimeFailure: non-finite loss at epoch 0 step 0: loss_cls=inf"]
    assert saved["start_to_first_report_s"] == 7.5 and saved["first_epoch_s"] == 2.5 and saved["overhead_s"] == 5.0
    again = stats.TrialStatsCallback(tmp_path)             # a resumed driver keeps what was recorded
    again.setup()
    again.on_trial_start(0, [], trial)                     # t=200
    assert read_trial_stats(tmp_path)["abcde_00000"]["attempts"] == 3
    assert read_trial_stats(tmp_path)["abcde_00000"]["overhead_s"] == 5.0


def _sweep_result(trials):
    best = max((t["metric"] for t in trials if t["status"] != "ERROR"), default=None)
    return SweepResult("s", "pid", "val/bbox_mAP50", "max", trials, None, best, None, "/tmp", 10.0,
                       median_overhead(trials))


def _t(tid, metric, epochs, status, overhead=4.0, error=None):
    return {"trial_id": tid, "model.neck.expand_ratio": 0.5, "metric": metric, "epochs": epochs, "status": status,
            "attempts": 1 if error is None else 2, "start_to_first_report_s": None if error else overhead + 1.0,
            "first_epoch_s": None if error else 1.0, "overhead_s": None if error else overhead,
            "mlflow_run_id": "r" + tid, "error": error}


def test_trial_table_has_attempts_and_timing_and_an_error_column_only_when_needed():
    good = _sweep_result([_t("a", 0.5, 4, "TERMINATED"), _t("b", 0.1, 1, "STOPPED_EARLY", overhead=6.0)])
    head = good.table_rows()[0]
    assert head[-5:] == ["attempts", "start_to_first_report_s", "first_epoch_s", "overhead_s", "mlflow run"]
    assert good.table_rows()[2][-4:] == ["7", "1", "6", "rb"]
    assert good.median_trial_overhead_s == 5.0
    bad = _sweep_result([_t("a", 0.5, 4, "TERMINATED"), _t("c", float("nan"), 0, "ERROR", error="ValueError: x")])
    assert bad.table_rows()[0][-1] == "error" and bad.table_rows()[2][-1] == "ValueError: x"
    assert bad.table_rows()[2][-6:-1] == ["2", "-", "-", "-", "rc"]
    assert bad.summary_lines() == ["trials failed: 1 (c)",
                                   "median Tune overhead per trial (start → first report − first epoch): 4.0 s"]


def test_bench_row_counts_trial_epochs_and_the_table_shows_the_budget():
    asha = _row("asha", _sweep_result([_t("a", 0.5, 4, "TERMINATED"), _t("b", 0.2, 1, "STOPPED_EARLY"),
                                       _t("c", 0.1, 2, "STOPPED_EARLY", overhead=8.0)]), 61.0)
    none = _row("none", _sweep_result([_t(x, 0.4, 4, "TERMINATED") for x in "abc"]), 99.0)
    assert (asha.trial_epochs, asha.stopped_early, asha.median_overhead_s) == (7, 2, 4.0)
    assert (none.trial_epochs, none.stopped_early, none.failed) == (12, 0, 0)
    table = SearchBenchResult("rtmdet_tiny", "val/bbox_mAP50", "max", 3, 4, 48, 128, 2, [asha, none]).to_markdown()
    assert "| TPE + ASHA | 0.5000 | 7 / 12 | 2 | 0 | 61 | 4.0 |" in table
    assert "| TPE, no early stopping | 0.4000 | 12 / 12 | 0 | 0 | 99 | 4.0 |" in table
    assert set(search_bench_space()) == {"model.assigner.soft_center_alpha", "model.assigner.soft_center_beta",
                                         "recipe.mosaic.max_cached_images", "model.neck.expand_ratio"}


@pytest.mark.slow
def test_bench_search_cli_runs_both_sweeps_at_the_smallest_scale(tmp_path, cli_env):
    env = cli_env
    r = subprocess.run([sys.executable, "-m", "detflow", "bench", "search", "--trials", "2", "--epochs", "1",
                        "--images", "8", "--image-size", "64", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout)  # --json: nothing but the JSON on stdout (Tune runs silent)
    asha, none = result["rows"]
    assert (asha["scheduler"], none["scheduler"]) == ("asha", "none")
    assert none["trials"] == asha["trials"] == 2 and none["failed"] == asha["failed"] == 0
    assert none["trial_epochs"] == 2 * 1 and 1 <= asha["trial_epochs"] <= none["trial_epochs"]
    for row in (asha, none):
        assert 0.0 <= row["best_metric"] <= 1.0
        assert row["wall_time_s"] > 0 and row["median_overhead_s"] > 0
        assert row["parent_run_id"]


@pytest.mark.parametrize("name, expected", [
    ("_trial_fn_0277f262_1_model_neck_expand_ratio=0.5000_2026-11-21_15-23-20", "0277f262"),       # OptunaSearch
    ("_trial_fn_c5a6a_00001_1_model_head_loss_cls_weight=2.0000_2026-11-21_15-11-05", "c5a6a_00001"),  # grid/random
])
def test_trial_id_of_a_trial_that_never_reported_comes_from_its_directory(name, expected):
    from detflow.tune.results import _trial_id

    assert _trial_id(types.SimpleNamespace(metrics=None, path=f"/x/{name}")) == expected
    assert _trial_id(types.SimpleNamespace(metrics={"trial_id": "abc"}, path=f"/x/{name}")) == "abc"
