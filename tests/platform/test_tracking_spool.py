"""Per-epoch metrics through a tracking outage, against a real ``mlflow server`` (SQLite backend)
that is stopped and started again: spooled while it is down, re-sent at the next epoch, once."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from services import MlflowServer  # noqa: E402

from detflow import tracking  # noqa: E402
from detflow.tracking.run import call_with_retry  # noqa: E402

FAST = tracking.RetryPolicy(attempts=2, base_delay_s=0.05, max_delay_s=0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_spool")
    srv = MlflowServer(root, backend_uri=f"sqlite:///{root / 'mlflow.db'}", artifacts_destination=str(root / "art"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def up(server, monkeypatch, tmp_path):
    """The server running, this process pointed at it, MLflow's own HTTP retries off."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    return server


def _new(policy=FAST) -> tracking.Run:
    run = tracking.Run.create("spool-test", experiment="spool", policy=policy)
    return run


def _history(run: tracking.Run, key: str) -> list[int]:
    return [step for step, _, _ in tracking.Run(run.run_id).metric_history(key)]


def test_outage_spools_and_resyncs_every_epoch_exactly_once(up, tmp_path):
    run = _new()
    spool = tracking.MetricSpool(tmp_path / "spool.jsonl")
    epochs = tracking.EpochMetrics(run, spool)
    assert epochs.log(0, {"train/loss": 1.0, "epoch": 0, "note": "skipped"}) is True
    up.stop()
    assert epochs.log(1, {"train/loss": 0.5}) is False           # down: kept in the spool
    assert [r["step"] for r in spool.pending()] == [1]
    assert epochs.log(1, {"train/loss": 0.5}) is False           # the same epoch again: not spooled twice
    assert sum("step" in r for r in spool.records()) == 2
    up.start()
    assert epochs.log(2, {"train/loss": 0.25}) is True            # back: 1 then 2 go
    assert spool.pending() == []
    assert _history(run, "epoch") == [0, 1, 2]
    assert _history(run, "train/loss") == [0, 1, 2]
    values = {s: v for s, v, _ in tracking.Run(run.run_id).metric_history("train/loss")}
    assert values == {0: 1.0, 1: 0.5, 2: 0.25}
    assert "note" not in tracking.Run(run.run_id).data().metrics


def test_resending_a_batch_with_its_timestamp_adds_nothing(up):
    run = _new()
    run.log_metrics(3, {"a": 1.0, "b": 2.0}, timestamp_ms=1_700_000_000_000)
    run.log_metrics(3, {"a": 1.0, "b": 2.0}, timestamp_ms=1_700_000_000_000)   # a reply lost, re-sent
    assert _history(run, "a") == [3] and _history(run, "b") == [3]


def test_crash_after_send_before_mark_is_not_logged_twice(up, tmp_path):
    run = _new()
    spool = tracking.MetricSpool(tmp_path / "spool.jsonl")
    # epoch 0 went through completely but the process died before marking it flushed
    spool.append(0, 1_700_000_000_000, {"train/loss": 1.0})
    run.log_metrics(0, {"train/loss": 1.0, "epoch": 0.0}, timestamp_ms=1_700_000_000_000)
    # epoch 1: its metrics went, its marker did not (a chunked batch cut short)
    spool.append(1, 1_700_000_001_000, {"train/loss": 0.5})
    run.log_metrics(1, {"train/loss": 0.5}, timestamp_ms=1_700_000_001_000)
    restarted = tracking.EpochMetrics(tracking.Run(run.run_id, policy=FAST), spool)
    assert restarted.flush() is True
    assert _history(run, "train/loss") == [0, 1] and _history(run, "epoch") == [0, 1]
    assert restarted.log(0, {"train/loss": 9.0}) is True                 # an epoch re-run after restart
    assert _history(run, "train/loss") == [0, 1]
    assert [json.loads(line).get("flushed") for line in spool.path.read_text().splitlines()][-2:] == [0, 1]


def test_logger_started_during_an_outage_dedupes_once_the_store_is_back(up, tmp_path):
    run = _new()
    run.log_metrics(0, {"train/loss": 1.0, "epoch": 0.0})
    up.stop()
    epochs = tracking.EpochMetrics(tracking.Run(run.run_id, policy=FAST), tracking.MetricSpool(tmp_path / "s.jsonl"))
    assert epochs.log(0, {"train/loss": 1.0}) is False   # unknown whether 0 is in MLflow: spooled
    assert epochs.log(1, {"train/loss": 0.5}) is False
    up.start()
    assert epochs.flush() is True
    assert _history(run, "train/loss") == [0, 1] and _history(run, "epoch") == [0, 1]


def test_retry_policy_is_bounded_and_jittered():
    policy = tracking.RetryPolicy(attempts=5, base_delay_s=0.5, max_delay_s=3.0)
    assert [policy.delay(i, rng=lambda: 1.0) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(3, rng=lambda: 0.0) == 0.0
    calls, slept = [], []

    def down():
        calls.append(1)
        raise ConnectionError("Connection refused to http://u:secretpw@host:5000")

    with pytest.raises(tracking.TrackingUnavailable) as err:
        call_with_retry(down, policy, "log", sleep=slept.append)
    assert len(calls) == 5 and len(slept) == 4 and all(0 <= s <= 3.0 for s in slept)
    assert "secretpw" not in str(err.value)


def test_errors_retrying_cannot_fix_are_raised_at_once():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    calls = []

    def bad():
        calls.append(1)
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

    with pytest.raises(MlflowException):
        call_with_retry(bad, tracking.RetryPolicy(attempts=4), "log", sleep=lambda s: None)
    assert len(calls) == 1


def test_spool_file_lives_in_a_local_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    assert tracking.spool_file(tmp_path / "runs" / "r1", "abc") == tmp_path / "runs" / "r1" / "mlflow-spool.jsonl"
    assert tracking.spool_file("s3://bucket/runs/r1", "abc").name == "abc.jsonl"


def test_a_bug_is_raised_not_retried_nor_spooled_away():
    calls = []

    def buggy():
        calls.append(1)
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError):
        call_with_retry(buggy, tracking.RetryPolicy(attempts=4), "log", sleep=lambda s: None)
    assert len(calls) == 1
