"""The body of a step's Ray task: scratch in, stored outputs out.

1. A node-local scratch directory becomes ``ctx.path``; the step's stdout/stderr go to its log too.
2. The step runs and returns outputs naming files in the scratch (or locations it stored itself,
   like a training run's checkpoints).
3. The scratch is uploaded to the step's storage ``<storage>/<run_id>/<step_id>/``, every output
   path inside the scratch is rewritten to its stored location, and the scratch is removed —
   whether the step succeeded or not (a failed attempt's files are stored too, so that a retry
   or a resume on another node continues a search). The log is stored beside the outputs (``step.log``, every
   attempt appended).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import artifact_store
from ..scratch import scratch_dir
from .context import StepContext

__all__ = ["execute_step", "publish_outputs"]


class _Tee:
    """stdout/stderr of a step, also written to its log. A logging handler made during the step keeps
    this object after the step closed its log (Ray reuses the worker process for later steps): a
    closed stream is skipped, so that handler still writes to the worker's own stream."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def _open(self) -> list[Any]:
        return [s for s in self.streams if not getattr(s, "closed", False)]

    def write(self, data: str) -> int:
        for s in self._open():
            s.write(data)
            s.flush()
        return len(data)

    def flush(self) -> None:
        for s in self._open():
            s.flush()

    def __getattr__(self, name: str) -> Any:
        """Other file attributes (``encoding``, ``isatty``, ``fileno`` — Ray Tune reads them) of the
        original stream."""
        return getattr(self.streams[0], name)


def execute_step(run_fn: Callable[..., dict], params: Any, ctx: StepContext) -> dict:
    """Run one attempt of a step in this (Ray task) process; returns its stored outputs (JSON)."""
    ctx.apply_env()
    with scratch_dir(ctx.step_id) as scratch:
        ctx.scratch = str(scratch)
        try:
            return _execute_in(run_fn, params, ctx, scratch)
        finally:
            artifact_store.clear_cache()  # the inputs this step downloaded (Ray reuses the worker process)


def _execute_in(run_fn: Callable[..., dict], params: Any, ctx: StepContext, scratch: Path) -> dict:
    with _step_log(ctx, scratch) as log:
        log.write(f"--- {ctx.step_id} attempt {ctx.attempt} ({_dt.datetime.now():%Y-%m-%d %H:%M:%S}) "
                  f"on node {_node_ip()}\n")
        try:
            outputs = _run_teed(run_fn, params, ctx, log)
        except Exception:
            _store_partial(scratch, ctx.storage, log)
            raise
        outputs = publish_outputs(dict(outputs or {}), scratch, ctx.storage)
    json.dumps(outputs)  # outputs must be JSON (they go to the state DB)
    return outputs


def _node_ip() -> str:
    """The Ray node's IP (what a step log says it ran on)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 — outside a Ray worker
        return "local"


def _run_teed(run_fn: Callable[..., dict], params: Any, ctx: StepContext, log: Any) -> dict:
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    try:
        return run_fn(params, ctx)
    except BaseException:
        log.write(traceback.format_exc())
        raise
    finally:
        sys.stdout, sys.stderr = out, err


@contextlib.contextmanager
def _step_log(ctx: StepContext, scratch: Path) -> Iterator[Any]:
    """The step's log file: written in place on local storage (readable while the step runs); on
    object storage kept beside the scratch and stored (appended to earlier attempts') at the end."""
    if not artifact_store.is_uri(ctx.storage):
        path = Path(ctx.log_uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", buffering=1) as log:
            yield log
        return
    local = scratch.parent / f"{scratch.name}.log"
    with contextlib.suppress(Exception):
        if artifact_store.exists(ctx.log_uri):
            local.write_text(artifact_store.read_text(ctx.log_uri))
    try:
        with open(local, "a", buffering=1) as log:
            yield log
    finally:
        with contextlib.suppress(Exception):
            artifact_store.upload(local, ctx.log_uri)
        local.unlink(missing_ok=True)


def _store_partial(scratch: Path, storage: str, log: Any) -> None:
    """Store what a failed attempt left (a search's experiment directory), so a retry continues it."""
    try:
        if any(scratch.iterdir()):
            artifact_store.upload(scratch, storage)
    except Exception as exc:  # noqa: BLE001 — the step's own error is the one to report
        log.write(f"warning: could not store the failed attempt's files: {exc}\n")


def publish_outputs(outputs: dict, scratch: Path, storage: str) -> dict:
    """Upload the scratch contents to ``storage`` and return ``outputs`` with every path inside the
    scratch replaced by its stored location (other values unchanged)."""
    if any(scratch.iterdir()):
        artifact_store.upload(scratch, storage)
    prefix = str(scratch)

    def stored(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: stored(v) for k, v in value.items()}
        if isinstance(value, list):
            return [stored(v) for v in value]
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
            rel = value[len(prefix):].strip("/")
            return artifact_store.join(storage, *rel.split("/")) if rel else storage
        return value

    return stored(outputs)
