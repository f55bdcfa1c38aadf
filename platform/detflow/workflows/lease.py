"""The driver lease of a workflow run: at most one process drives a run at a time.

The lease lives in the run's row of the state DB (columns ``lease_holder`` = ``"host:pid"``,
``lease_since``, ``lease_expires_at``, ``lease_token``). It is taken by one atomic compare-and-set
``UPDATE … WHERE id = :id AND (lease_holder IS NULL OR lease_expires_at < :now)`` checked by its
row count (SQLite serialises writers with ``BEGIN IMMEDIATE``; PostgreSQL re-checks the ``WHERE``
on the row it waited for), so of two processes racing for a run exactly one wins. Each acquisition
adds one to ``lease_token``, the fencing token: the holder's status updates are conditional on it
(:meth:`detflow.workflows.state.StateStore.update_step` with ``token=``), so a driver whose lease
expired and was taken over can no longer write, even if it does not know yet.

:class:`DriverLease` renews the lease from a heartbeat thread every ``ttl / 3`` seconds (``ttl``:
``$DETFLOW_LEASE_TTL_S``, 30 s by default); a renewal that finds another token marks the lease
lost and :meth:`DriverLease.check` raises :class:`LeaseLost`. Leaving the ``with`` block releases it.
Expiry compares the clocks of different hosts: keep them in sync (NTP) to well under ``ttl / 3``.

Example::

    with DriverLease.acquire(store.engine, run_id) as lease:   # LeaseHeld (exit 2) if another holds it
        store.update_run(run_id, token=lease.token, status="running")
        lease.check()                                           # LeaseLost once it was taken over
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from ..errors import RuntimeFailure, UserInputError

__all__ = ["LEASE_TTL_ENV", "DEFAULT_TTL_S", "LeaseLost", "LeaseHeld", "LeaseInfo", "DriverLease", "lease_ttl",
           "holder_id", "read_lease", "try_acquire", "renew", "release"]

LEASE_TTL_ENV = "DETFLOW_LEASE_TTL_S"
DEFAULT_TTL_S = 30.0


class LeaseLost(RuntimeFailure):
    """This process's lease on a run was taken over (or could not be renewed in time): stop driving."""


class LeaseHeld(UserInputError):
    """Another live process holds the run's lease (exit 2)."""


def lease_ttl() -> float:
    """``$DETFLOW_LEASE_TTL_S`` (seconds > 0), 30 s by default."""
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        ttl = 0.0
    if not ttl > 0:
        raise UserInputError(f"${LEASE_TTL_ENV}: expected a number of seconds > 0, got {raw!r}")
    return ttl


def holder_id() -> str:
    """This process as a lease holder: ``"host:pid"``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "?"
    return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class LeaseInfo:
    """A run's lease as stored: ``holder`` is None when nobody holds it."""

    run_id: str
    holder: str | None
    since: float | None
    expires_at: float | None
    token: int

    @classmethod
    def of(cls, run: Any) -> "LeaseInfo":
        """The lease of a ``WorkflowRun`` row (any object with the ``lease_*`` attributes)."""
        return cls(run.id, run.lease_holder, run.lease_since, run.lease_expires_at, int(run.lease_token or 0))

    def live(self, now: float | None = None) -> bool:
        """Held and not expired."""
        now = time.time() if now is None else now
        return self.holder is not None and self.expires_at is not None and self.expires_at >= now

    @property
    def host(self) -> str:
        return (self.holder or "?").rpartition(":")[0] or "?"

    @property
    def pid(self) -> str:
        return (self.holder or "?").rpartition(":")[2]

    def describe(self) -> str:
        """``pid 123 on host since 2026-01-01T12:00:00+00:00 (lease expires in 25 s)``."""
        left = max((self.expires_at or 0) - time.time(), 0)
        return f"pid {self.pid} on {self.host} since {_iso(self.since)} (lease expires in {left:.0f} s unless renewed)"


_SELECT = "SELECT lease_holder, lease_since, lease_expires_at, lease_token FROM workflow_runs WHERE id = :id"


def read_lease(engine: Engine, run_id: str) -> LeaseInfo | None:
    """The stored lease of ``run_id`` (None when there is no such run)."""
    with engine.begin() as conn:
        row = conn.execute(text(_SELECT), {"id": run_id}).fetchone()
    return None if row is None else LeaseInfo(run_id, row[0], row[1], row[2], int(row[3] or 0))


def try_acquire(engine: Engine, run_id: str, holder: str, ttl: float, *, clear_cancel: bool = False,
                now: float | None = None) -> int | None:
    """Take the lease if it is free or expired (atomic compare-and-set); returns the new fencing
    token, or None when another holder's lease is live. ``clear_cancel`` also voids cancel requests
    made before this acquisition, in the same statement."""
    now = time.time() if now is None else now
    extra = ", cancel_requested = 0" if clear_cancel else ""
    sql = (f"UPDATE workflow_runs SET lease_holder = :holder, lease_token = lease_token + 1, lease_since = :now, "
           f"lease_expires_at = :expires, heartbeat_at = :now{extra} "
           f"WHERE id = :id AND (lease_holder IS NULL OR lease_expires_at < :now)")
    with engine.begin() as conn:
        taken = conn.execute(text(sql), {"holder": holder, "now": now, "expires": now + ttl, "id": run_id}).rowcount
        if taken != 1:
            return None
        row = conn.execute(text(_SELECT), {"id": run_id}).fetchone()
    return int(row[3])


def renew(engine: Engine, run_id: str, holder: str, token: int, ttl: float, *, now: float | None = None) -> bool:
    """Extend the lease by ``ttl`` (and ``heartbeat_at``); False when ``token`` is no longer current."""
    now = time.time() if now is None else now
    sql = ("UPDATE workflow_runs SET lease_expires_at = :expires, heartbeat_at = :now "
           "WHERE id = :id AND lease_token = :token AND lease_holder = :holder")
    with engine.begin() as conn:
        count = conn.execute(text(sql), {"expires": now + ttl, "now": now, "id": run_id, "token": token,
                                         "holder": holder}).rowcount
    return count == 1


def release(engine: Engine, run_id: str, holder: str, token: int) -> bool:
    """Free the lease if ``token`` still holds it (the token itself never goes back); True if freed."""
    sql = ("UPDATE workflow_runs SET lease_holder = NULL, lease_since = NULL, lease_expires_at = NULL "
           "WHERE id = :id AND lease_token = :token AND lease_holder = :holder")
    with engine.begin() as conn:
        return conn.execute(text(sql), {"id": run_id, "token": token, "holder": holder}).rowcount == 1


class DriverLease:
    """A lease this process holds on one run, renewed by a daemon thread until :meth:`close`."""

    def __init__(self, engine: Engine, run_id: str, token: int, ttl: float, holder: str):
        self.engine, self.run_id, self.token, self.ttl, self.holder = engine, run_id, token, ttl, holder
        self.expires_at = time.time() + ttl
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    @classmethod
    def acquire(cls, engine: Engine, run_id: str, *, ttl: float | None = None, clear_cancel: bool = False,
                heartbeat: bool = True) -> "DriverLease":
        """Take the lease of ``run_id`` or raise :class:`LeaseHeld` naming the live holder."""
        ttl = lease_ttl() if ttl is None else ttl
        holder = holder_id()
        token = try_acquire(engine, run_id, holder, ttl, clear_cancel=clear_cancel)
        if token is None:
            info = read_lease(engine, run_id)
            who = info.describe() if info is not None and info.holder else "another process"
            raise LeaseHeld(f"run {run_id!r} is being driven by {who}; wait for it to finish, or stop it with "
                            f"`detflow cancel {run_id}`")
        lease = cls(engine, run_id, token, ttl, holder)
        if heartbeat:
            lease._thread.start()
        return lease

    def _beat(self) -> None:
        """Renew every ``ttl / 3`` s; stop (marking the lease lost) when the token changed, or when
        no renewal got through before the lease expired."""
        while not self._stop.wait(self.ttl / 3):
            try:
                if renew(self.engine, self.run_id, self.holder, self.token, self.ttl):
                    self.expires_at = time.time() + self.ttl
                    continue
                info = read_lease(self.engine, self.run_id)
                who = f" by {info.describe()} (token {info.token})" if info is not None and info.holder else ""
                self.lost = f"run {self.run_id!r}: this driver's lease (token {self.token}) was taken over{who}"
            except Exception as exc:  # noqa: BLE001 — the DB may be briefly unreachable: retry until expiry
                if time.time() < self.expires_at:
                    continue
                self.lost = f"run {self.run_id!r}: could not renew the driver lease before it expired: {exc}"
            return

    def check(self) -> None:
        """Raise :class:`LeaseLost` once the lease was lost (the driver must stop launching steps)."""
        if self.lost is None and time.time() > self.expires_at:
            self.lost = f"run {self.run_id!r}: the driver lease expired before it could be renewed"
        if self.lost is not None:
            raise LeaseLost(f"{self.lost}; this driver stops")

    def close(self) -> None:
        """Stop renewing and free the lease (a no-op for a lease that was taken over)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            release(self.engine, self.run_id, self.holder, self.token)
        except Exception:  # noqa: BLE001 — unreachable DB: the lease expires by itself
            pass

    def __enter__(self) -> "DriverLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
