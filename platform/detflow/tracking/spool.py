"""Per-epoch metrics that survive a tracking outage: written to a local JSONL spool first, sent to
MLflow through :class:`~detflow.tracking.run.Run` (retried with backoff and jitter), re-sent at the
next epoch while the store is down, and never logged twice.

Exactly once, by construction:

- each epoch's batch gets its timestamp once, when it is spooled; every re-send carries the same
  timestamp and step, and the SQL store ignores a row identical to one it has (a reply lost after
  the server committed, a batch split in chunks of which some went through);
- the marker metric ``epoch`` is the last row sent for an epoch: its history is the set of epochs
  MLflow has complete, read back when a logger starts (a worker restart) before anything is re-sent;
- a ``{"flushed": step}`` line in the spool records a completed send.

Spool lines::

    {"step": 3, "ts": 1700000000000, "metrics": {"train/loss": 0.71, "val/bbox_mAP": 0.12}}
    {"flushed": 3}
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .run import RetryPolicy, Run, TrackingUnavailable, numeric_metrics

__all__ = ["MetricSpool", "EpochMetrics", "spool_file", "EPOCH_KEY"]

log = logging.getLogger(__name__)
EPOCH_KEY = "epoch"
SPOOL_NAME = "mlflow-spool.jsonl"


def spool_file(run_dir: str | os.PathLike | None, run_id: str) -> Path:
    """Where a run's spool lives: ``RUN_DIR/mlflow-spool.jsonl`` for a local run directory, else
    ``$DETFLOW_HOME/tracking-spool/<run_id>.jsonl`` (a run stored in an object store)."""
    from ..artifact_store import is_uri
    from ..paths import state_dir

    if run_dir is not None and not is_uri(run_dir):
        return Path(run_dir) / SPOOL_NAME
    return state_dir() / "tracking-spool" / f"{run_id}.jsonl"


class MetricSpool:
    """An append-only JSONL file of per-step metric batches and of the steps already sent."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, step: int, ts: int, metrics: Mapping[str, float]) -> None:
        self._append({"step": int(step), "ts": int(ts), "metrics": dict(metrics)})

    def mark_flushed(self, step: int) -> None:
        self._append({"flushed": int(step)})

    def records(self) -> list[dict]:
        """Every complete line (a line cut short by a crash is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def pending(self) -> list[dict]:
        """Batches spooled and not marked flushed, in step order (the first spooled of a step wins)."""
        batches: dict[int, dict] = {}
        flushed: set[int] = set()
        for rec in self.records():
            if "flushed" in rec:
                flushed.add(int(rec["flushed"]))
            elif "step" in rec:
                batches.setdefault(int(rec["step"]), rec)
        return [batches[s] for s in sorted(batches) if s not in flushed]

    def spooled_steps(self) -> set[int]:
        return {int(r["step"]) for r in self.records() if "step" in r}


class EpochMetrics:
    """One batch of metrics per epoch on ``run``, exactly once, whatever the store does meanwhile.

    ``log(epoch, metrics)`` spools the batch then tries to send everything pending; while the store
    is down (every retry of ``policy`` failed) it returns False and the batch waits for the next call
    or for :meth:`flush`. Training never fails because of tracking.
    """

    def __init__(self, run: Run, spool: MetricSpool, *, clock=time.time):
        self.run, self.spool, self.clock = run, spool, clock
        self._logged: set[int] | None = None  # epochs complete in MLflow (None: not read yet)
        self._load_logged()

    def _load_logged(self) -> bool:
        if self._logged is not None:
            return True
        try:
            self._logged = {step for step, _, _ in self.run.metric_history(EPOCH_KEY)}
        except TrackingUnavailable as exc:
            log.warning("metrics of run %s spooled to %s: %s", self.run.run_id, self.spool.path, exc)
            return False
        return True

    def is_logged(self, epoch: int) -> bool:
        """True when ``epoch`` is known to be complete in MLflow or already spooled."""
        return (self._logged is not None and epoch in self._logged) or epoch in self.spool.spooled_steps()

    def log(self, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Spool ``metrics`` of ``epoch`` (once) and send what is pending; True when all of it reached
        MLflow. An epoch logged or spooled before is not spooled again."""
        if not self.is_logged(epoch):
            values = {k: v for k, v in numeric_metrics(metrics).items() if k != EPOCH_KEY}
            self.spool.append(epoch, int(self.clock() * 1000), values)
        return self.flush()

    def flush(self) -> bool:
        """Send every pending batch (in step order); True when nothing is left pending."""
        if not self._load_logged():
            return False
        assert self._logged is not None
        for rec in self.spool.pending():
            step = int(rec["step"])
            if step not in self._logged:
                try:
                    self._send(step, int(rec["ts"]), rec["metrics"])
                except TrackingUnavailable as exc:
                    log.warning("MLflow unavailable, epoch %d kept in %s: %s", step, self.spool.path, exc)
                    return False
                self._logged.add(step)
            self.spool.mark_flushed(step)
        return True

    def _send(self, step: int, ts: int, metrics: Mapping[str, float]) -> None:
        # the marker goes last: once it is in MLflow, every row of the epoch is
        self.run.log_metrics(step, metrics, timestamp_ms=ts)
        self.run.log_metrics(step, {EPOCH_KEY: float(step)}, timestamp_ms=ts)

    def flush_until(self, deadline_s: float, interval_s: float = 2.0) -> bool:
        """Retry :meth:`flush` until it succeeds or ``deadline_s`` seconds have passed."""
        end = time.monotonic() + deadline_s
        while True:
            if self.flush():
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(interval_s)


def worker_run(run_id: str, policy: RetryPolicy | None = None) -> Run:
    """A :class:`Run` for a training worker: MLflow's own HTTP retries switched off (unless the
    environment sets them) so that :class:`RetryPolicy` alone bounds how long an outage blocks an epoch."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return Run(run_id, policy=policy or RetryPolicy(attempts=4, base_delay_s=0.5, max_delay_s=4.0))
