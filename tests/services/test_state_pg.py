"""Workflow-state migrations on PostgreSQL: processes migrating a fresh database at the same instant
all succeed (the version table is created inside the migration lock), and the version table records
each migration once. The helper is tests/platform/test_state_durability.py's."""
from __future__ import annotations

import secrets

import pytest
from scenarios import platform_test_module

pytestmark = pytest.mark.services


def _scenarios():
    return platform_test_module("test_state_durability.py")


def test_concurrent_first_migrations_on_postgresql(postgres):
    from detflow.workflows.state import latest_version, make_engine, schema_version

    name = f"fresh_{secrets.token_hex(3)}"
    postgres.create_database(name)
    url = postgres.url(name, "psycopg2")
    assert _scenarios().migrate_concurrently(url, n=3) == [str(latest_version())] * 3
    engine = make_engine(url)
    assert engine.dialect.name == "postgresql" and schema_version(engine) == latest_version()
    with engine.connect() as conn:
        versions = [r[0] for r in conn.exec_driver_sql("SELECT version FROM schema_version ORDER BY version")]
        tables = {r[0] for r in conn.exec_driver_sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert versions == list(range(1, latest_version() + 1))
    assert {"schema_version", "workflow_runs", "step_runs"} <= tables
