"""Migrations run forward on an empty database and on one that already holds data."""

from __future__ import annotations

import psycopg

from coordinator.config import libpq_url
from coordinator.repo.migrate import current_revision, upgrade
from tests.conftest import PostgresServer

PK_TYPES = {
    "users": "integer",
    "hosts": "uuid",
    "jobs": "uuid",
    "workloads": "integer",
    "karma_events": "bigint",
    "transactions": "bigint",
    "workload_submissions": "integer",
}


def _column_types(url: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ).fetchall()
    return {(t, c): d for t, c, d in rows}


def test_upgrade_on_an_empty_database_builds_the_whole_schema(pg_server: PostgresServer) -> None:
    name = pg_server.create()
    try:
        url = pg_server.url(name)
        assert current_revision(url) is None
        upgrade(url)
        assert current_revision(url) is not None
        types = _column_types(url)
        for table, pk_type in PK_TYPES.items():
            assert types[(table, "id")] == pk_type, table
        # Every reference to an Island or a job is a UUID.
        for (table, column), data_type in types.items():
            if column in ("host_id", "job_id") and not table.startswith("procrastinate_"):
                assert data_type == "uuid", (table, column)
        for table in (
            "api_keys",
            "magic_links",
            "user_sessions",
            "pairing_codes",
            "payouts",
            "market_snapshots",
            "verifications",
            "security_scans",
            "procrastinate_jobs",
        ):
            assert any(t == table for t, _ in types), table
    finally:
        pg_server.drop(name)


def test_upgrade_from_the_first_revision_keeps_existing_data(pg_server: PostgresServer) -> None:
    name = pg_server.create()
    try:
        url = pg_server.url(name)
        upgrade(url, "0001")
        with psycopg.connect(libpq_url(url)) as conn:
            conn.execute("INSERT INTO users (email, credits) VALUES ('keep@example.com', 42)")
            conn.execute("INSERT INTO workloads (slug, name) VALUES ('keep', 'Keep')")
            conn.execute(
                "INSERT INTO hosts (id, status) VALUES ('9b2e4f1c-5a7d-4e3b-8c6f-1d2a3b4c5d6e', 'offline')"
            )
            conn.commit()
        upgrade(url)
        upgrade(url)  # running it again is a no-op
        with psycopg.connect(libpq_url(url)) as conn:
            assert conn.execute("SELECT credits FROM users WHERE email='keep@example.com'").fetchone() == (
                42,
            )
            assert conn.execute("SELECT count(*) FROM workloads WHERE slug='keep'").fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM hosts").fetchone() == (1,)
    finally:
        pg_server.drop(name)
