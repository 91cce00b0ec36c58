"""The hot paths' psycopg sessions (`repo/raw.py`) behave like the ORM sessions they replace: the same
statements with the same binds and rows, SQLAlchemy's errors, one transaction committed or rolled back
whole, and the after-commit work run only for what committed."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from coordinator.billing import ledger
from coordinator.repo import raw
from coordinator.repo.database import Database
from coordinator.runtime import Runtime
from tests.factories import make_consumer

ECHO_SQL = text(
    "SELECT CAST(:n AS int) + 1 AS next, CAST(:doc AS jsonb) -> 'a' AS a, :note AS note, '50%' AS pct"
).bindparams(bindparam("doc", type_=JSONB), note="fixed")
BALANCE_SQL = text("SELECT credits FROM users WHERE id = :id")


async def test_a_statement_binds_like_sqlalchemy_and_returns_rows_like_it(runtime: Runtime) -> None:
    async with runtime.db.raw_statement() as session:
        result = await session.execute(ECHO_SQL, {"n": 41, "doc": {"a": [1, "x"]}})
    row = result.first()
    assert (row.next, row.a, row.note, row.pct) == (42, [1, "x"], "fixed", "50%")
    assert row._mapping == {"next": 42, "a": [1, "x"], "note": "fixed", "pct": "50%"}
    assert result.scalar() == 42 and result.one() == row and list(result) == [row]
    async with runtime.db.session() as orm:
        same = (await orm.execute(ECHO_SQL, {"n": 41, "doc": {"a": [1, "x"]}})).first()
    assert tuple(same) == tuple(row)


async def test_database_errors_are_sqlalchemys(runtime: Runtime) -> None:
    async with runtime.db.raw_statement() as session:
        with pytest.raises(DataError):
            await session.execute(text("SELECT CAST(:v AS int)"), {"v": "not a number"})
        # the connection is usable after an error (autocommit: nothing is left open)
        assert (await session.execute(text("SELECT 1"))).scalar() == 1
    consumer = await make_consumer(runtime, credits=Decimal(5))
    key = f"charge:{uuid.uuid4()}"
    async with runtime.db.raw_transaction() as session:
        assert await ledger.debit(session, consumer.user.id, Decimal(1), idempotency_key=key) is not None
    with pytest.raises(IntegrityError):
        async with runtime.db.raw_transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO transactions (user_id, type, amount, balance_after, idempotency_key)"
                    " VALUES (:id, 'charge', -1, 0, :key)"
                ),
                {"id": consumer.user.id, "key": key},
            )


async def test_a_transaction_commits_whole_or_not_at_all_and_its_commit_work_follows(
    runtime: Runtime,
) -> None:
    consumer = await make_consumer(runtime, credits=Decimal(10))
    user_id = consumer.user.id
    seen: list[str] = []

    @raw.on_commit
    def committed(info: raw.Info) -> None:
        if "marker" in info:
            seen.append(f"commit {info.pop('marker')}")

    @raw.on_rollback
    def rolled_back(info: raw.Info) -> None:
        if "marker" in info:
            seen.append(f"rollback {info.pop('marker')}")

    try:
        with pytest.raises(RuntimeError):
            async with runtime.db.raw_transaction() as session:
                session.info["marker"] = "failed"
                await ledger.debit(session, user_id, Decimal(3))
                raise RuntimeError("crash after the debit, before the commit")
        async with runtime.db.session() as orm:
            assert await orm.scalar(BALANCE_SQL, {"id": user_id}) == Decimal(10)  # nothing of it stayed
        async with runtime.db.raw_transaction() as session:
            session.info["marker"] = "kept"
            await ledger.debit(session, user_id, Decimal(3))
            await ledger.credit(session, user_id, Decimal(1), type="refund", idempotency_key="r:1")
        async with runtime.db.raw_statement() as session:
            assert (await session.execute(BALANCE_SQL, {"id": user_id})).scalar() == Decimal(8)
            assert await ledger.unreconciled_users(session) == []
    finally:
        raw._ON_COMMIT.remove(committed)
        raw._ON_ROLLBACK.remove(rolled_back)
    assert seen == ["rollback failed", "commit kept"]


async def test_an_unreachable_database_fails_the_hot_path_with_an_operational_error() -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none", raw_timeout=0.3)
    try:
        with pytest.raises(OperationalError):
            async with db.raw_statement() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await db.dispose()
