"""The ORM sessions of `Database` (`session`, `read`, `transaction`): one that holds no transaction is
closed in place, without a turn of the event loop; one that holds a connection is closed the way SQLAlchemy
closes it, so a cancelled caller still gives the connection back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.repo.database import Database
from coordinator.runtime import Runtime

Opener = Callable[[Database], AbstractAsyncContextManager[AsyncSession]]
OPENERS: dict[str, Opener] = {
    "session": lambda db: db.session(),
    "read": lambda db: db.read(),
    "transaction": lambda db: db.transaction(),
}


def checked_out(db: Database) -> int:
    pool: Any = db.engine.sync_engine.pool
    return int(pool.checkedout())


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_session_that_ran_nothing_is_closed_without_a_turn_of_the_loop(
    runtime: Runtime, kind: str
) -> None:
    ran: list[str] = []
    async with OPENERS[kind](runtime.db) as session:
        asyncio.get_running_loop().call_soon(ran.append, "another callback")
    assert ran == []  # nothing else ran: the close did not wait on the loop
    assert not session.in_transaction()
    await asyncio.sleep(0)
    assert ran == ["another callback"]


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_session_gives_its_connection_back_after_statements(runtime: Runtime, kind: str) -> None:
    before = checked_out(runtime.db)
    async with OPENERS[kind](runtime.db) as session:
        assert (await session.execute(text("SELECT 41 + 1"))).scalar() == 42
        assert checked_out(runtime.db) == before + 1
    assert checked_out(runtime.db) == before


@pytest.mark.parametrize("kind", ["session", "read"])
async def test_a_caller_cancelled_while_its_session_closes_still_gives_the_connection_back(
    runtime: Runtime, kind: str
) -> None:
    before = checked_out(runtime.db)
    holding = asyncio.Event()

    async def caller() -> None:
        async with OPENERS[kind](runtime.db) as session:
            await session.execute(text("SELECT 1"))  # the session now holds a connection
            this = asyncio.current_task()
            assert this is not None
            # The cancel lands once the close has begun (its first wait on the loop).
            asyncio.get_running_loop().call_soon(this.cancel)
            holding.set()

    task = asyncio.create_task(caller())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert holding.is_set()
    assert checked_out(runtime.db) == before
