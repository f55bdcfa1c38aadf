"""``detflow bench nas``: the same SpineNet search with 1 and 2 trials at a time. The table and the
overlap count on hand-made rows; end to end at the smallest size (2 trials × 1 epoch, slow)."""
import json
import subprocess
import sys
import types

import pytest

from detflow.bench.nas_bench import NasBenchResult, _row, max_overlap


def test_max_overlap_counts_intervals_open_at_once():
    assert max_overlap([]) == 0
    assert max_overlap([(0, 10), (10, 20)]) == 1            # back to back: never two at once
    assert max_overlap([(0, 10), (5, 20), (6, 7), (30, 40)]) == 3
    assert max_overlap([(0, 10), (9.5, 20)]) == 2


def _result(ranked, best):
    return types.SimpleNamespace(ranked=ranked, best=best, metric="val/bbox_mAP50", parent_run_id="p1")


def test_row_and_table_from_a_search_result():
    ranked = [{"trial_id": "a", "status": "TERMINATED", "metric": 0.2, "cost/latency_ms": 9.0,
               "started_at": 100.0, "ended_at": 160.0},
              {"trial_id": "b", "status": "STOPPED_EARLY", "metric": 0.1, "cost/latency_ms": 7.0,
               "started_at": 101.0, "ended_at": 150.0},
              {"trial_id": "c", "status": "ERROR", "metric": float("nan"), "started_at": 150.0, "ended_at": None},
              {"trial_id": "d", "status": "REJECTED", "metric": float("nan"), "started_at": None, "ended_at": None}]
    row = _row(2, _result(ranked, ranked[0]), "cost/latency_ms", 120.0)
    assert (row.trials, row.completed, row.failed, row.max_running) == (4, 2, 1, 2)
    assert row.trials_per_hour == 120.0 and (row.best_metric, row.best_cost) == (0.2, 9.0)
    none = _row(1, _result([], None), "cost/latency_ms", 10.0)
    assert (none.trials, none.best_metric, none.max_running) == (0, None, 0)
    table = NasBenchResult("val/bbox_mAP50", "latency_ms", "none", 4, 2, 32, 128, [none, row]).to_markdown()
    assert "| 2 | 120 | 120.0 | 2 | 0.2000 | 9.00 | 2 / 1 |" in table
    assert "| 1 | 10 | 0.0 | 0 | - | - | 0 / 0 |" in table
    assert table.startswith("NAS benchmark: SpineNet proxy search, TPE (seed 0) on val/bbox_mAP50 and latency_ms")


def test_bench_nas_rejects_a_bad_cost_naming_it(tmp_path):
    from detflow.cli import main

    assert main(["bench", "nas", "--cost", "flops"]) == 2
    assert main(["bench", "nas", "--concurrency", "1,x"]) == 2


@pytest.mark.slow
def test_bench_nas_cli_runs_the_search_at_each_concurrency(tmp_path, cli_env):
    env = cli_env
    r = subprocess.run([sys.executable, "-m", "detflow", "bench", "nas", "--trials", "2", "--concurrency", "1,2",
                        "--epochs", "1", "--images", "8", "--image-size", "128", "--cost", "gmacs", "--json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout)  # --json: nothing but the JSON on stdout
    one, two = result["rows"]
    assert (one["concurrency"], two["concurrency"]) == (1, 2)
    for row in (one, two):
        assert row["trials"] == 2 and row["failed"] == 0 and row["completed"] == 2
        assert 0.0 <= row["best_metric"] <= 1.0 and row["best_cost"] > 0
        assert row["wall_time_s"] > 0 and row["trials_per_hour"] == pytest.approx(2 * 3600 / row["wall_time_s"])
        assert row["parent_run_id"]
    assert one["max_running"] == 1                  # one at a time: never overlapped
    assert two["max_running"] == 2                  # two at a time: the trials really ran concurrently
