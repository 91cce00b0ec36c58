"""Hot-path SQL on a psycopg connection pool, without SQLAlchemy's session and execution layers.

The job moves run the same named `text()` statements as everywhere else, through `RawSession`: the part of
`AsyncSession` they use (`execute`, `info`, the results' `first`/`all`/`scalar`/`one`), on a connection of
the process's psycopg pool (`Database.raw_statement`, `Database.raw_transaction`). A statement is compiled
once by SQLAlchemy's psycopg dialect (placeholders, typed binds such as JSONB); executing it costs
psycopg's own work only. Measured on the development machine, one autocommit statement: 140–170 µs of CPU
against 500–560 µs through an ORM session; a transaction of two statements 440–470 µs against 960–1,170 µs
(`docs/decisions/request-hot-path.md`).

Errors are SQLAlchemy's (`DBAPIError.instance` maps psycopg's classes: `IntegrityError`, `DataError`, …), so
callers handle both session kinds alike. Work to do once a transaction commits (or forget when it rolls
back) is registered with `on_commit`/`on_rollback` and runs for both kinds: SQLAlchemy's session events
call the same functions with the session's `info`.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import Histogram
from psycopg.pq import ExecStatus
from psycopg.rows import RowMaker
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from coordinator.telemetry import metrics
from coordinator.telemetry.database import statement_kind

_DIALECT = pg_psycopg.dialect()  # type: ignore[no-untyped-call]

Info = dict[str, Any]
_ON_COMMIT: list[Callable[[Info], None]] = []
_ON_ROLLBACK: list[Callable[[Info], None]] = []


def on_commit(fn: Callable[[Info], None]) -> Callable[[Info], None]:
    """Run `fn(info)` after every committed transaction, of either session kind."""
    _ON_COMMIT.append(fn)
    return fn


def on_rollback(fn: Callable[[Info], None]) -> Callable[[Info], None]:
    """Run `fn(info)` after every rolled-back transaction, of either session kind."""
    _ON_ROLLBACK.append(fn)
    return fn


def committed(info: Info) -> None:
    for fn in _ON_COMMIT:
        fn(info)


def rolled_back(info: Info) -> None:
    for fn in _ON_ROLLBACK:
        fn(info)


@event.listens_for(Session, "after_commit")
def _session_committed(session: Session) -> None:
    committed(session.info)


@event.listens_for(Session, "after_rollback")
def _session_rolled_back(session: Session) -> None:
    rolled_back(session.info)


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    fixed: dict[str, Any]  # values bound when the statement was defined (`text(...).bindparams(x=...)`)
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]  # typed binds (JSONB, …)
    kind: str  # `statement_kind`
    seconds: Histogram  # `db_query_seconds` for `kind`, looked up once (a label look-up costs 1.4 µs)

    def args(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        args = {**self.fixed, **params} if params else dict(self.fixed)
        for name, process in self.processors:
            if name in args:
                args[name] = process(args[name])
        return args


_COMPILED: dict[int, tuple[TextClause, _Compiled]] = {}


def _compiled(clause: TextClause) -> _Compiled:
    found = _COMPILED.get(id(clause))
    if found is not None and found[0] is clause:
        return found[1]
    compiled = clause.compile(dialect=_DIALECT)
    if "POSTCOMPILE" in compiled.string:
        raise TypeError("expanding parameters are not supported on the raw path")
    processors = []
    for name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
        if process is not None:
            processors.append((name, process))
    fixed = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
    kind = statement_kind(compiled.string)
    result = _Compiled(
        compiled.string, fixed, tuple(processors), kind, metrics.db_query_seconds.labels(kind=kind)
    )
    _COMPILED[id(clause)] = (clause, result)  # module-level statements: the cache stays small
    return result


@functools.lru_cache(maxsize=1024)
def _row_class(names: tuple[bytes, ...]) -> type[tuple[Any, ...]]:
    """A named tuple per column list (the result's column names, as libpq gives them), with `_mapping`
    like SQLAlchemy's rows."""
    fields = tuple(name.decode() for name in names)
    base = collections.namedtuple("Row", fields, rename=True)  # type: ignore[misc]

    def mapping(row: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(fields, row, strict=True))

    return type("Row", (base,), {"__slots__": (), "_mapping": property(mapping)})


def _returns_rows(result: Any) -> bool:
    """Whether a statement's result has rows (a SELECT, a RETURNING); an UPDATE without one has none."""
    return result is not None and result.status == ExecStatus.TUPLES_OK


def _rows(cursor: Any) -> RowMaker[Any]:
    # The names straight from the result: `cursor.description` builds a Column object per column, twice
    # per statement (once here, once to ask whether there are rows).
    result = cursor.pgresult
    if not _returns_rows(result):
        return tuple
    return _row_class(tuple(result.fname(i) for i in range(result.nfields)))._make  # type: ignore[attr-defined, no-any-return]


class RawResult:
    """A statement's rows, fetched: the part of SQLAlchemy's `Result` the hot paths use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        return list(self._rows)

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise ValueError(f"expected at most one row, got {len(self._rows)}")
        return self.first()

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """A new connection of the pool: Python lists go as binary arrays. (psycopg's text array dumper quotes
    each element through a regular expression: 7.4 ms for the six 100-element arrays of one dispatch pass
    on the development machine, against 0.7 ms in binary; the statements cast every array they take.)"""
    conn.adapters.register_dumper(list, ListBinaryDumper)


class RawSession:
    """The statements of one checkout of the psycopg pool (autocommit, or inside one transaction)."""

    __slots__ = ("_conn", "_observers", "info")

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], info: Info, observers: Sequence[Callable[[str], None]] = ()
    ) -> None:
        self._conn = conn
        self._observers = observers
        self.info = info

    async def execute(self, statement: TextClause, params: Mapping[str, Any] | None = None) -> RawResult:
        compiled = _compiled(statement)
        args = compiled.args(params)
        for observe in self._observers:
            observe(compiled.sql)
        started = time.perf_counter()
        try:
            cursor = self._conn.cursor(row_factory=_rows)
            await cursor.execute(compiled.sql, args)
            rows = await cursor.fetchall() if _returns_rows(cursor.pgresult) else []
        except psycopg.Error as error:
            metrics.db_query_errors.labels(kind=compiled.kind).inc()
            raise DBAPIError.instance(compiled.sql, args, error, psycopg.Error) from error
        compiled.seconds.observe(time.perf_counter() - started)
        return RawResult(rows, cursor.rowcount)


# What the statements of a job move run on: either session kind.
Sql = AsyncSession | RawSession
