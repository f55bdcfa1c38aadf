"""Durable workflow state in SQL (SQLAlchemy 2): workflow runs and step runs.

The database is ``$DETFLOW_STATE_URL`` (any SQLAlchemy URL, e.g. ``postgresql+psycopg2://…``) or
the SQLite file ``$DETFLOW_HOME/workflows.db``. SQLite runs in WAL mode with a busy timeout and
every transaction starts with ``BEGIN IMMEDIATE``, so concurrent drivers queue for the write lock
instead of failing with "database is locked".

Status updates made by a run's driver carry its lease's fencing token (``token=``, see
:mod:`detflow.workflows.lease`): they apply only while that token is the run's current one, and
raise :class:`~detflow.workflows.lease.LeaseLost` otherwise.

Schema migrations are versioned SQL files shipped in ``detflow/workflows/migrations/NNNN_*.sql``;
the ``schema_version`` table records the applied version and :func:`migrate` applies the rest
(in one transaction, under a lock taken before the version table is even created) whenever a store
is opened. Stored error strings go through :func:`detflow.redact.redact_text`.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Float, Integer, String, Text, create_engine, event, exists, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..paths import state_dir
from ..redact import redact_text
from .lease import LeaseLost

__all__ = [
    "StepStatus", "RunStatus", "WorkflowRun", "StepRun", "StateStore", "default_state_url", "make_engine",
    "migrate", "schema_version", "MIGRATIONS_DIR", "latest_version", "MIGRATION_LOCK_KEY",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class StepStatus:
    PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
    CACHED, CANCELLED, NOT_RUN = "cached", "cancelled", "not_run"
    DONE = frozenset({SUCCEEDED, CACHED})
    FINAL = frozenset({SUCCEEDED, CACHED, FAILED, CANCELLED, NOT_RUN})


class RunStatus:
    """``interrupted``: the driver stopped on Ctrl-C, SIGTERM or SIGHUP; not final, ``detflow resume`` continues it."""

    PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "pending", "running", "succeeded", "failed", "cancelled"
    INTERRUPTED = "interrupted"
    FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class Base(DeclarativeBase):
    pass


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    spec: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(1000))
    address: Mapped[str | None] = mapped_column(String(500))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    driver_pid: Mapped[int | None] = mapped_column(Integer)
    driver_host: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(200))
    lease_holder: Mapped[str | None] = mapped_column(String(300))
    lease_since: Mapped[float | None] = mapped_column(Float)
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def spec_dict(self) -> dict:
        return json.loads(self.spec)


class StepRun(Base):
    __tablename__ = "step_runs"
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cache_key: Mapped[str | None] = mapped_column(String(64))
    outputs: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    log_path: Mapped[str | None] = mapped_column(String(1000))
    next_attempt_at: Mapped[float | None] = mapped_column(Float)

    @property
    def outputs_dict(self) -> dict:
        return json.loads(self.outputs) if self.outputs else {}

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at


def _without_credentials(value: Any) -> Any:
    """``value`` (a workflow spec) with every string through :func:`detflow.storage.strip_credentials`:
    ``scheme://user:password@host`` → ``scheme://user@host`` (the password then comes from the
    reader's ``PGPASSWORD`` / ``.pgpass`` / …), secret query parameters dropped."""
    from ..storage import strip_credentials

    if isinstance(value, dict):
        return {k: _without_credentials(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_credentials(v) for v in value]
    return strip_credentials(value) if isinstance(value, str) else value


def _redact_error(fields: dict[str, Any]) -> None:
    """``fields["error"]`` through :func:`detflow.redact.redact_text`: a stored error never keeps a
    credential an exception quoted (``postgresql://u:secret@h/db`` loses its password)."""
    if isinstance(fields.get("error"), str):
        fields["error"] = redact_text(fields["error"])


def default_state_url() -> str:
    return os.environ.get("DETFLOW_STATE_URL") or f"sqlite:///{state_dir() / 'workflows.db'}"


def make_engine(url: str | None = None) -> Engine:
    """A SQLAlchemy engine; SQLite gets WAL, a 60 s busy timeout and ``BEGIN IMMEDIATE`` transactions."""
    url = url or default_state_url()
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        _set_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _set_wal(cur: Any, timeout_s: float = 60.0) -> None:
    """``PRAGMA journal_mode=WAL``, retried: SQLite answers "database is locked" at once, without its
    busy handler, while another connection is switching a fresh database to WAL (two processes opening
    a new state DB together)."""
    import random
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.02, 0.2))


def _migration_files() -> list[tuple[int, Path]]:
    files = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = re.match(r"(\d+)_", path.name)
        if match:
            files.append((int(match.group(1)), path))
    return files


def latest_version() -> int:
    return max(v for v, _ in _migration_files())


def _statements(sql: str) -> Iterator[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    for stmt in body.split(";"):
        if stmt.strip():
            yield stmt.strip()


# Key of the PostgreSQL advisory lock that serialises migrations (any constant unique to detflow).
MIGRATION_LOCK_KEY = 0x6465_7466_6C6F  # "detflo"


def _version_table(conn: Any) -> None:
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")


def schema_version(engine: Engine) -> int:
    """The applied schema version (0 for an empty database); creates nothing."""
    from sqlalchemy import inspect

    with engine.connect() as conn:
        if not inspect(conn).has_table("schema_version"):
            return 0
        row = conn.exec_driver_sql("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(engine: Engine, target: int | None = None) -> int:
    """Apply the migrations newer than the database's version, up to ``target`` (default: latest).

    Runs in one transaction that first takes the migration lock (PostgreSQL: a transaction-scoped
    advisory lock; SQLite: the ``BEGIN IMMEDIATE`` write lock), and only then creates the version table
    and reads it, so concurrent first migrations of a fresh database queue instead of racing on
    ``CREATE TABLE``; returns the resulting version."""
    target = latest_version() if target is None else target
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        _version_table(conn)
        current = int(conn.exec_driver_sql("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
        for version, path in _migration_files():
            if current < version <= target:
                for stmt in _statements(path.read_text()):
                    conn.exec_driver_sql(stmt)
                conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": version})
                current = version
    return current


@dataclass
class StateStore:
    """Runs and steps in the state database (opened and migrated on construction)."""

    url: str | None = None

    def __post_init__(self) -> None:
        self.url = self.url or default_state_url()
        self.engine = make_engine(self.url)
        migrate(self.engine)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---------------------------------------------------------------------------------- runs
    def create_run(self, run_id: str, workflow: str, spec: dict, steps: list[tuple[str, str]],
                   *, source: str | None = None, address: str | None = None, status: str = RunStatus.PENDING) -> None:
        """Insert a run and one pending row per ``(step_id, kind)``. The stored ``spec`` keeps no URL
        passwords (:func:`_without_credentials`): a resumed run reads them from its own environment."""
        now = time.time()
        spec = _without_credentials(spec)
        with self.session() as s, s.begin():
            s.add(WorkflowRun(id=run_id, workflow=workflow, status=status, spec=json.dumps(spec), source=source,
                              address=address, created_at=now, cancel_requested=0))
            s.flush()  # the run row first: PostgreSQL enforces step_runs.run_id → workflow_runs.id
            s.add_all(StepRun(run_id=run_id, step_id=sid, kind=kind, status=StepStatus.PENDING, attempts=0)
                      for sid, kind in steps)

    def get_run(self, run_id: str) -> WorkflowRun | None:
        with self.session() as s:
            return s.get(WorkflowRun, run_id)

    def latest_run(self) -> WorkflowRun | None:
        with self.session() as s:
            return s.scalars(select(WorkflowRun).order_by(WorkflowRun.created_at.desc()).limit(1)).first()

    def list_runs(self, limit: int = 20) -> list[WorkflowRun]:
        with self.session() as s:
            return list(s.scalars(select(WorkflowRun).order_by(WorkflowRun.created_at.desc()).limit(limit)))

    def update_run(self, run_id: str, *, token: int | None = None, **fields: Any) -> None:
        """Set columns of a run; with ``token`` (a driver's fencing token) only while it is the run's
        current lease token, else :class:`LeaseLost` is raised and nothing changes."""
        _redact_error(fields)
        query = update(WorkflowRun).where(WorkflowRun.id == run_id)
        if token is not None:
            query = query.where(WorkflowRun.lease_token == token)
        with self.session() as s, s.begin():
            count = s.execute(query.values(**fields)).rowcount
        if token is not None and count == 0:
            raise LeaseLost(f"run {run_id!r}: lease token {token} is no longer current (another driver took "
                            "the run over); this driver stops")

    def request_cancel(self, run_id: str) -> None:
        self.update_run(run_id, cancel_requested=1)

    def cancel_requested(self, run_id: str) -> bool:
        run = self.get_run(run_id)
        return bool(run and run.cancel_requested)

    def claim_driver(self, run_id: str, token: int | None = None) -> None:
        """Record this process as the run's driver (shown by ``detflow status``)."""
        self.update_run(run_id, token=token, driver_pid=os.getpid(), driver_host=socket.gethostname(),
                        heartbeat_at=time.time())

    # --------------------------------------------------------------------------------- steps
    def steps(self, run_id: str) -> list[StepRun]:
        with self.session() as s:
            return list(s.scalars(select(StepRun).where(StepRun.run_id == run_id)))

    def step(self, run_id: str, step_id: str) -> StepRun | None:
        with self.session() as s:
            return s.get(StepRun, (run_id, step_id))

    def update_step(self, run_id: str, step_id: str, *, token: int | None = None, **fields: Any) -> None:
        """Set columns of a step; with ``token`` only while the run's lease token is still ``token``
        (checked in the same ``UPDATE``), else :class:`LeaseLost` is raised and nothing changes."""
        if "outputs" in fields and not isinstance(fields["outputs"], (str, type(None))):
            fields["outputs"] = json.dumps(fields["outputs"])
        _redact_error(fields)
        query = update(StepRun).where(StepRun.run_id == run_id, StepRun.step_id == step_id)
        if token is not None:
            query = query.where(exists().where(WorkflowRun.id == run_id, WorkflowRun.lease_token == token))
        with self.session() as s, s.begin():
            if token is not None:  # PostgreSQL: hold the run row so that no acquisition commits in between
                s.execute(select(WorkflowRun.id).where(WorkflowRun.id == run_id).with_for_update(read=True))
            count = s.execute(query.values(**fields)).rowcount
        if token is not None and count == 0:
            raise LeaseLost(f"run {run_id!r}, step {step_id!r}: lease token {token} is no longer current (another "
                            "driver took the run over); this driver stops")

    def find_cached(self, cache_key: str, limit: int = 5) -> list[StepRun]:
        """Earlier successful step runs with this cache key, newest first."""
        with self.session() as s:
            query = (select(StepRun).where(StepRun.cache_key == cache_key, StepRun.status == StepStatus.SUCCEEDED)
                     .order_by(StepRun.finished_at.desc()).limit(limit))
            return list(s.scalars(query))
