"""Schema migrations: Alembic for our tables, then procrastinate's own schema for the job queue."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config

from coordinator.config import libpq_url, normalize_database_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`; safe to run on every start."""
    command.upgrade(alembic_config(database_url), revision)
    apply_queue_schema(database_url)


def apply_queue_schema(database_url: str) -> None:
    """Install procrastinate's tables once (its schema script is not idempotent)."""
    from procrastinate import schema

    with psycopg.connect(libpq_url(normalize_database_url(database_url)), autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if exists and exists[0]:
            return
        conn.execute(schema.SchemaManager.get_schema())  # type: ignore[arg-type]


def current_revision(database_url: str) -> str | None:
    with psycopg.connect(libpq_url(normalize_database_url(database_url))) as conn:
        has_table = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
        if not has_table or not has_table[0]:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
