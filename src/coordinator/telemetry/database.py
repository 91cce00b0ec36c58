"""SQL statement durations and pool use, from SQLAlchemy engine and pool events of one engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine

from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

KINDS = frozenset({"select", "insert", "update", "delete", "with", "begin", "commit", "rollback"})
_STARTS = "coordinator_query_starts"


def statement_kind(statement: str) -> str:
    """The statement's first keyword if it is a known one, else `other` (keeps label values bounded)."""
    head = statement.lstrip(" \t\r\n(").split(None, 1)
    word = head[0].lower() if head else ""
    return word if word in KINDS else "other"


def instrument_engine(engine: Engine, *, slow_query_ms: float = 500.0) -> Callable[[], None]:
    """Attach the listeners to a (sync) engine — for the async one pass `engine.sync_engine`. Returns a
    function that detaches them again."""

    def before(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if not active:
            return
        conn.info.setdefault(_STARTS, []).append(time.perf_counter())

    def after(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        starts = conn.info.get(_STARTS)
        if not starts:
            return
        elapsed = time.perf_counter() - starts.pop()
        kind = statement_kind(statement)
        metrics.db_query_seconds.labels(kind=kind).observe(elapsed)
        if elapsed * 1000 >= slow_query_ms:
            log.warning("db.slow_query", kind=kind, duration_ms=round(elapsed * 1000, 1), sql=statement[:300])

    def failed(exc_context: Any) -> None:
        conn = exc_context.connection
        starts = conn.info.get(_STARTS) if conn is not None else None
        if starts:
            starts.pop()
        metrics.db_query_errors.labels(kind=statement_kind(exc_context.statement or "")).inc()

    # A disposed engine's new pool inherits these listeners, so they check a flag instead of trusting
    # `event.remove` alone.
    active = True

    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if active:
            metrics.db_pool_checked_out.inc()

    def checkin(dbapi_conn: Any, record: Any) -> None:
        if active:
            metrics.db_pool_checked_out.dec()

    listeners: list[tuple[Any, str, Callable[..., Any]]] = [
        (engine, "before_cursor_execute", before),
        (engine, "after_cursor_execute", after),
        (engine, "handle_error", failed),
        (engine.pool, "checkout", checkout),
        (engine.pool, "checkin", checkin),
    ]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    capacity = _pool_capacity(engine)
    metrics.db_pool_capacity.inc(capacity)

    def uninstall() -> None:
        nonlocal active
        active = False
        for target, name, fn in listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        metrics.db_pool_capacity.dec(capacity)

    return uninstall


def _pool_capacity(engine: Engine) -> int:
    pool: Any = engine.pool
    size = pool.size() if callable(getattr(pool, "size", None)) else 0
    overflow = getattr(pool, "_max_overflow", 0)
    return int(size) + max(int(overflow), 0)
