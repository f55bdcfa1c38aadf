"""SIGTERM and SIGHUP handled like Ctrl-C by every detflow command.

A process manager (systemd, Kubernetes, Slurm, ``ray job stop``) stops a command with SIGTERM, and
a closed terminal sends SIGHUP; by default either kills Python on the spot: MLflow runs stay
RUNNING, the workflow stays ``running``, and the Ray and server processes it started live on.
:func:`interrupt_on_signals` turns both into a ``KeyboardInterrupt`` in the main thread, so the
cleanup written for Ctrl-C runs: MLflow runs end KILLED, a workflow run is marked ``interrupted``
(resumable), ``finally`` blocks shut Ray down. The first signal interrupts; repeats during the
cleanup are ignored (send SIGKILL to force). ``ray.init`` installs its own SIGTERM handler
(``sys.exit``), which would skip that cleanup, so while the block is active our handlers stay
installed: a library's ``signal.signal`` call for these signals is only remembered and restored
on exit. Ray's C++ failure-signal handler (absl) also catches SIGTERM, prints a stack trace and
leaves the heap corrupted often enough that the process aborts at exit (code 134 instead of 143):
the block sets ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1`` (unless set) for the Ray processes it starts.

:func:`run_process_group` runs a child (``mlflow server``) in its own process group and terminates
the whole group when the wait is interrupted.

Example::

    with interrupt_on_signals() as interrupt:
        try:
            long_running_command()
        except KeyboardInterrupt:
            cleanup()
    sys.exit(interrupt.exit_code or 0)        # 143 after SIGTERM, 129 after SIGHUP
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = ["INTERRUPT_SIGNALS", "Interrupt", "interrupt_on_signals", "run_process_group", "terminate_group",
           "shutdown_ray"]

INTERRUPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
RAY_FAILURE_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"  # read when ``ray`` is imported
_real_signal = signal.signal


@dataclass
class Interrupt:
    """What :func:`interrupt_on_signals` caught: ``signum`` of the first signal (None: none yet)."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int | None:
        """``128 + signum``, the shell's code for a command stopped by that signal."""
        return 128 + self.signum if self.signum is not None else None

    def handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            _say(f"detflow: {signal.Signals(signum).name} again: still stopping (SIGKILL forces it)")
            return
        self.signum = signum
        _say(f"detflow: {signal.Signals(signum).name}: stopping like Ctrl-C")
        raise KeyboardInterrupt


def _say(line: str) -> None:
    """A line on stderr, which may be gone (SIGHUP after the terminal closed)."""
    with contextlib.suppress(Exception):
        print(line, file=sys.stderr, flush=True)


_active: Interrupt | None = None


def _guarded_signal(signalnum: Any, handler: Any) -> Any:
    """``signal.signal`` while a block is active: the signals it handles keep its handler (see module docstring)."""
    active = _active
    if active is not None and signalnum in active.previous and threading.current_thread() is threading.main_thread():
        before, active.previous[signalnum] = active.previous[signalnum], handler
        return before
    return _real_signal(signalnum, handler)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[Interrupt]:
    """In the main thread: SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (once) until the block
    exits, then the previous handlers are back. A signal ignored on entry stays ignored (``nohup``
    ignores SIGHUP). Elsewhere (another thread, or nested): does nothing."""
    global _active
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread() or _active is not None:
        yield interrupt
        return
    for signum in INTERRUPT_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            interrupt.previous[signum] = _real_signal(signum, interrupt.handle)
    _active, signal.signal = interrupt, _guarded_signal
    set_env = RAY_FAILURE_HANDLER_ENV not in os.environ
    if set_env:
        os.environ[RAY_FAILURE_HANDLER_ENV] = "1"
    try:
        yield interrupt
    finally:
        _active, signal.signal = None, _real_signal
        for signum, handler in interrupt.previous.items():
            _real_signal(signum, handler if handler is not None else signal.SIG_DFL)
        if set_env:
            os.environ.pop(RAY_FAILURE_HANDLER_ENV, None)


def shutdown_ray() -> None:
    """Stop the Ray this process started (or disconnect from a cluster), if Ray is initialised."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        with contextlib.suppress(Exception):
            ray.shutdown()


def terminate_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after ``grace_s``; reaps ``proc``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.time() + grace_s
        while time.time() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_process_group(cmd: Sequence[str], *, env: dict[str, str] | None = None, grace_s: float = 5.0) -> int:
    """Run ``cmd`` in a new session (its own process group) and wait for it; returns its exit code.

    When the wait ends with an exception (Ctrl-C, or SIGTERM/SIGHUP under :func:`interrupt_on_signals`)
    the whole group gets SIGTERM, then SIGKILL after ``grace_s``, and the exception propagates; when
    the child exits by itself, any processes it left in its group are terminated too."""
    proc = subprocess.Popen(list(cmd), env=env, start_new_session=True)
    try:
        code = proc.wait()
    except BaseException:
        terminate_group(proc, grace_s)
        raise
    if _group_alive(proc.pid):
        terminate_group(proc, grace_s)
    return code
