"""Per-trial bookkeeping a Tune driver callback keeps beside the sweep (``trial_stats.json``).

For every trial: how many times Tune started it (a crash retry, or a resumed sweep, starts it
again), the first line of each error, and Ray Tune's per-trial overhead::

    start_to_first_report_s   Tune starting the trial's actor → the trial's first result reaching Tune
    first_epoch_s             training time of epoch 1 (``train/epoch_time_s`` of that first result)
    overhead_s                start_to_first_report_s − first_epoch_s

``overhead_s`` is everything that is not the first epoch's training steps: the trial actor, the
Ray Train controller and worker group, dataset/model build, the MLflow run, and epoch 1's
validation, checkpoint and report. The timing is taken from the attempt that reported first.
``started_at`` / ``ended_at`` (epoch seconds): the trial's first start and its end (complete or
error), so that a search can show which trials ran at the same time.
The file is rewritten after every change, so a resumed sweep keeps what the killed driver saw.
It lives in a sub-folder (``stats/``) of the experiment: on restore, Ray Tune copies every top-level
``.json``/``.pkl`` of the experiment folder into its driver staging folder and uploads them back
while it runs, which would overwrite a top-level file the resumed driver keeps updating with the
killed driver's copy.
This module imports Ray: import it lazily (the sweep CLI and config validation must stay light).
"""
from __future__ import annotations

import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

__all__ = ["TrialStatsCallback", "read_trial_stats", "error_line", "median_overhead", "STATS_FILE",
           "EPOCH_TIME_KEY"]

STATS_FILE = "stats/trial_stats.json"
EPOCH_TIME_KEY = "train/epoch_time_s"


def read_trial_stats(exp_dir: Path) -> dict[str, dict[str, Any]]:
    """``{trial_id: {"attempts", "errors", "start_to_first_report_s", "first_epoch_s", "overhead_s"}}``."""
    return _read(Path(exp_dir) / STATS_FILE)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_ERROR_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Failure|Interrupt|Exit)\w*): (?P<msg>.*\S)")


def error_line(exc: Any) -> str | None:
    """The one line that says what went wrong, e.g. ``detflow.errors.RuntimeFailure: non-finite loss …``.

    Ray wraps a trial's exception (``RayTaskError`` around the trainable's error, around Ray Train's
    ``WorkerGroupError``, around the worker's own error), and the text carries each remote traceback.
    The first ``Type: message`` line that is not one of Ray's wrappers is the root cause; without
    one, the first such line, else ``Type: last line`` of the text.
    """
    if exc is None:
        return None
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    found = [m for m in map(_ERROR_LINE.match, lines) if m]
    own = [m for m in found if not m.group("type").startswith("ray.")]
    if own or found:
        return (own or found)[0].group(0)[:500]
    return (lines[-1] if isinstance(exc, str) else f"{type(exc).__name__}: {lines[-1]}")[:500]


def median_overhead(trials: list[dict[str, Any]]) -> float | None:
    """Median of the trials' ``overhead_s`` (those that reported at least once)."""
    values = [t["overhead_s"] for t in trials if isinstance(t.get("overhead_s"), (int, float))
              and not math.isnan(t["overhead_s"])]
    return statistics.median(values) if values else None


class TrialStatsCallback(Callback):
    """Ray Tune driver callback filling ``exp_dir/stats/trial_stats.json`` (see the module docstring)."""

    def __init__(self, exp_dir: Path):
        self.path = Path(exp_dir) / STATS_FILE
        self.stats: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}

    def setup(self, **info: Any) -> None:
        """Start of ``Tuner.fit``: a restored Tuner unpickles this callback as it was when the sweep
        was created, so the file (what the previous driver saw) is read here, not in ``__init__``."""
        self.stats = _read(self.path)  # its own path: a sweep pickled before stats/ keeps its file
        self._started = {}

    def _entry(self, trial_id: str) -> dict[str, Any]:
        return self.stats.setdefault(trial_id, {"attempts": 0, "errors": []})

    def _save(self) -> None:
        from ..atomic import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.stats, indent=1))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self._entry(trial.trial_id)
        entry["attempts"] += 1
        self._started[trial.trial_id] = time.time()
        entry.setdefault("started_at", self._started[trial.trial_id])
        self._save()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        entry = self._entry(trial.trial_id)
        started = self._started.get(trial.trial_id)
        if "start_to_first_report_s" in entry or started is None:
            return
        entry["start_to_first_report_s"] = time.time() - started
        epoch = result.get(EPOCH_TIME_KEY)
        entry["first_epoch_s"] = float(epoch) if epoch is not None else None
        entry["overhead_s"] = entry["start_to_first_report_s"] - float(epoch) if epoch is not None else None
        self._save()

    def _record_error(self, trial: Any) -> None:
        entry = self._entry(trial.trial_id)
        entry["errors"].append(error_line(_latest_failure(trial)) or "unknown error")
        entry["failures"] = int(trial.num_failures)
        self._save()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record_error(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._entry(trial.trial_id)["ended_at"] = time.time()
        self._record_error(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._entry(trial.trial_id)["ended_at"] = time.time()
        self._save()


def _latest_failure(trial: Any) -> str | None:
    """Text of the trial's latest failure from Tune's local ``error.txt`` (each failure is appended
    under a ``Failure # N`` header; the copy in the storage path is synced later)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        return None
    chunks = re.split(r"^Failure # \d+ .*$", text, flags=re.M)
    return chunks[-1] if chunks and chunks[-1].strip() else None
