"""The async engine and session factory, created once per process from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from coordinator.repo import raw
from coordinator.telemetry import metrics


@asynccontextmanager
async def closing(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """`async with session`, without its turn of the event loop when nothing is left to close.
    SQLAlchemy closes a session in a task of its own, so that a cancelled caller cannot cut short the
    rollback and the connection's return to its pool; a busy loop runs whatever else is ready first (a
    submit waited 0.5 ms so, `docs/decisions/request-hot-path.md` §11). A session holding no transaction
    holds no connection: its close does no I/O, cannot be cut short, and is done in place."""
    try:
        yield session
    finally:
        if session.in_transaction():
            await session.__aexit__(None, None, None)  # SQLAlchemy's own shielded close
        else:
            await session.close()


class Database:
    """Owns the connection pools of one process: SQLAlchemy's engine, and psycopg's for the hot paths."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        info: dict[str, Any] | None = None,
        raw_timeout: float = 5.0,
    ) -> None:
        """`info`: what every session's `info` starts with (the process's caches its commits update).
        `raw_timeout`: how long a hot path waits for a connection of its pool (the database unreachable,
        or every connection busy) before it fails with `OperationalError`."""
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False, info=info)
        # Same pool; each statement is its own transaction, so a read costs no BEGIN and no ROLLBACK.
        autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.read_sessionmaker = async_sessionmaker(autocommit, expire_on_commit=False, info=info)
        self._info = dict(info or {})
        # The hot paths' own pool (`repo/raw.py`): autocommit connections, opened on first use; half the
        # engine's size, as it serves the few statements each job costs while the engine serves the rest.
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._raw_size = max(2, pool_size // 2)
        self._raw_timeout = raw_timeout
        self._raw_pool: AsyncConnectionPool[Any] | None = None
        # Called with each statement the hot paths' pool runs (the engine's own have SQLAlchemy's events).
        self.raw_observers: list[Callable[[str], None]] = []

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with closing(self.sessionmaker()) as session:
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads that need no snapshot across statements (one round trip each)."""
        async with closing(self.read_sessionmaker()) as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with closing(self.sessionmaker()) as session, session.begin():
            yield session

    @asynccontextmanager
    async def _raw_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = self._raw_pool
        if pool is None:
            pool = self._raw_pool = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=self._raw_size,
                timeout=self._raw_timeout,
                kwargs={"autocommit": True},
                configure=raw.configure,
                open=False,
            )
            await pool.open(wait=False)
            metrics.db_pool_capacity.inc(self._raw_size)
        try:
            conn = await pool.getconn()
        except PoolTimeout as error:
            raise OperationalError("(connection of the hot paths' pool)", None, error) from error
        metrics.db_pool_checked_out.inc()
        try:
            yield conn
        finally:
            metrics.db_pool_checked_out.dec()
            await pool.putconn(conn)

    @asynccontextmanager
    async def raw_statement(self) -> AsyncIterator[raw.RawSession]:
        """A hot path's one statement that is atomic by itself (a guarded UPDATE, a multi-row INSERT, a
        read): it commits on its own, so it costs no BEGIN and no COMMIT. Never for two writes."""
        async with self._raw_connection() as conn:
            yield raw.RawSession(conn, dict(self._info), self.raw_observers)

    @asynccontextmanager
    async def raw_transaction(self) -> AsyncIterator[raw.RawSession]:
        """A hot path's transaction: committed on success, rolled back on error; the `raw.on_commit` work
        runs once it committed."""
        info = dict(self._info)
        try:
            async with self._raw_connection() as conn, conn.transaction():
                yield raw.RawSession(conn, info, self.raw_observers)
        except BaseException:
            raw.rolled_back(info)
            raise
        raw.committed(info)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        pool, self._raw_pool = self._raw_pool, None
        if pool is not None:
            metrics.db_pool_capacity.dec(self._raw_size)
            await pool.close()
        await self.engine.dispose()
