"""Workflow step retries (:mod:`detflow.workflows.retry`): capped, jittered backoff; the ``retry_errors``
filter; bad input never retried; attempts counted in the state DB across resumes."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from detflow.errors import ConfigError, DataError, UserInputError
from detflow.workflows.lint import parse_workflow
from detflow.workflows.retry import RetryPolicy

ray = pytest.importorskip("ray")
import cloudpickle  # noqa: E402
from ray.exceptions import NodeDiedError, OutOfMemoryError, RayTaskError, WorkerCrashedError  # noqa: E402

from detflow.workflows.engine import resume_workflow, run_workflow  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this module by name

FAKE_SOURCE = '''
import json
from pathlib import Path
from detflow.workflows.kinds import StepKind, register_step_kind
from detflow.workflows.schema import StepParams

class RetryFakeParams(StepParams):
    counter: str = ""            # file with one JSON line [step, attempt] per execution (appends: no lost update)
    error: str = "ValueError"    # raised on every attempt

def retry_fake_run(params, ctx):
    with open(params.counter, "a") as f:  # steps run in parallel: one small O_APPEND write each
        f.write(json.dumps([ctx.step_id, ctx.attempt]) + "\\n")
    raise {"ValueError": ValueError, "ConnectionError": ConnectionError}[params.error](f"attempt {ctx.attempt}")

register_step_kind(StepKind("retryfake", RetryFakeParams, retry_fake_run, frozenset()), replace=True)
'''
exec(compile(FAKE_SOURCE, __file__ + ":fake", "exec"))  # registers the "retryfake" step kind


def _executions(counter: Path) -> dict[str, list[int]]:
    """``{step: [attempt, ...]}`` from the fake step's execution log."""
    found: dict[str, list[int]] = {}
    for line in counter.read_text().splitlines():
        step, attempt = json.loads(line)
        found.setdefault(step, []).append(attempt)
    return found


def _task_error(cause: BaseException) -> BaseException:
    """What ``ray.get`` raises for a step that raised ``cause``."""
    return RayTaskError("execute_step", "Traceback ...", cause).as_instanceof_cause()


def _step(**fields):
    wf = parse_workflow({"name": "t", "steps": [{"id": "s", "uses": "retryfake", **fields}]})
    return wf.steps[0]


# ------------------------------------------------------------------------------------------- delay
def test_delay_doubles_up_to_the_cap_without_jitter():
    policy = RetryPolicy(retries=5, delay_s=10, max_delay_s=25, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [10, 20, 25, 25]
    assert policy.delay(10_000) == 25  # no overflow on a huge attempt count


def test_jitter_stays_within_plus_minus_half_and_under_the_cap():
    policy = RetryPolicy(retries=9, delay_s=4, max_delay_s=1000, jitter=0.5, rng=random.Random(0))
    for attempt in (1, 2, 3):
        nominal = 4 * 2 ** (attempt - 1)
        delays = [policy.delay(attempt) for _ in range(500)]
        assert all(0.5 * nominal <= d <= 1.5 * nominal for d in delays), (attempt, min(delays), max(delays))
        assert min(delays) < 0.6 * nominal and max(delays) > 1.4 * nominal  # spread over the whole range
    capped = RetryPolicy(retries=9, delay_s=10, max_delay_s=12, jitter=0.5, rng=random.Random(1))
    delays = [capped.delay(3) for _ in range(200)]
    assert max(delays) == 12 and min(delays) >= 12 * 0.5  # the cap holds after the jitter


def test_step_fields_have_defaults_and_build_the_policy():
    step = _step()
    assert (step.retry_max_delay_s, step.retry_jitter, step.retry_errors) == (300.0, 0.5, ["any"])
    policy = RetryPolicy.of(_step(retries=2, retry_delay_s=1, retry_max_delay_s=3, retry_jitter=0,
                                  retry_errors=["oom", "TimeoutError"]))
    assert (policy.retries, policy.delay(5), policy.errors) == (2, 3, ("oom", "TimeoutError"))


@pytest.mark.parametrize("errors", [["UserInputError"], ["detflow.errors.ConfigError"], ["DataError"],
                                      ["not a name"], []])
def test_retry_errors_rejects_bad_input_errors_and_non_names(errors):
    with pytest.raises(ConfigError, match="retry_errors"):
        _step(retry_errors=errors)


# ------------------------------------------------------------------------------------------ filter
def test_default_retries_any_failure_but_never_bad_input():
    policy = RetryPolicy(retries=2)
    for exc in (WorkerCrashedError(), OutOfMemoryError("killed"), _task_error(RuntimeError("x")), KeyError("k")):
        assert policy.should_retry(exc, 1) and policy.should_retry(exc, 2) and not policy.should_retry(exc, 3)
    for exc in (UserInputError("bad"), ConfigError(["f: x: bad"]), DataError("bad data"),
                _task_error(ConfigError(["f: x: bad"])), _task_error(DataError("bad data"))):
        assert not policy.should_retry(exc, 1), exc
        assert not RetryPolicy(retries=2, errors=("any", "Exception")).should_retry(exc, 1), exc


def test_retry_errors_shorthands_and_class_names():
    def retried(errors, exc):
        return RetryPolicy(retries=1, errors=tuple(errors)).should_retry(exc, 1)

    assert retried(["worker_crash"], WorkerCrashedError())
    assert not retried(["worker_crash"], _task_error(ValueError("a bug")))
    assert retried(["oom"], OutOfMemoryError("memory monitor killed the task"))
    assert retried(["oom"], _task_error(MemoryError()))
    assert not retried(["oom"], WorkerCrashedError())
    assert retried(["node_lost"], NodeDiedError("node gone"))
    assert all(retried(["infra"], e) for e in (WorkerCrashedError(), OutOfMemoryError("m"), NodeDiedError("n")))
    assert not retried(["infra"], _task_error(ValueError("a bug")))
    # Python class names match the step's exception inside Ray's wrapper, subclasses included
    assert retried(["ConnectionError"], _task_error(ConnectionResetError("reset")))
    assert retried(["OSError"], _task_error(FileNotFoundError("f")))
    assert not retried(["ConnectionError"], _task_error(ValueError("v")))
    assert retried(["RayTaskError"], _task_error(ValueError("v")))  # any exception the step raised
    assert retried(["builtins.TimeoutError"], TimeoutError())
    assert not retried(["RayTaskError"], WorkerCrashedError())


# ------------------------------------------------------------------------------------ on real Ray
def test_filtered_error_is_not_retried_and_attempts_persist_across_resume(ray_session, tmp_path, monkeypatch):
    """(``ray_session``: the local Ray of tests/platform/conftest.py.)"""
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DETFLOW_STATE_URL", raising=False)
    counter, url = tmp_path / "count.json", f"sqlite:///{tmp_path / 'state.db'}"
    wf = parse_workflow({"name": "retries", "steps": [
        # a deterministic bug (ValueError) is not an infrastructure failure: not retried
        {"id": "bug", "uses": "retryfake", "retries": 3, "retry_delay_s": 0.05, "retry_errors": ["infra"],
         "with": {"counter": str(counter)}},
        {"id": "flaky", "uses": "retryfake", "retries": 1, "retry_delay_s": 0.05, "retry_errors": ["ConnectionError"],
         "with": {"counter": str(counter), "error": "ConnectionError"}},
    ]})
    first = run_workflow(wf, run_id="retries-1", state_url=url, lineage=False, quiet=True)
    assert first.status == "failed"
    assert {s: (v["status"], v["attempts"]) for s, v in first.steps.items()} == {
        "bug": ("failed", 1), "flaky": ("failed", 2)}, first.steps
    assert first.steps["bug"]["error"] == "ValueError: attempt 1"
    assert _executions(counter) == {"bug": [1], "flaky": [1, 2]}

    # resume: each failed step runs once more (attempt 3 of a step allowed 2), and is not retried again
    resumed = resume_workflow("retries-1", state_url=url, lineage=False, quiet=True)
    assert resumed.status == "failed"
    assert {s: (v["status"], v["attempts"]) for s, v in resumed.steps.items()} == {
        "bug": ("failed", 2), "flaky": ("failed", 3)}, resumed.steps
    assert _executions(counter) == {"bug": [1, 2], "flaky": [1, 2, 3]}
