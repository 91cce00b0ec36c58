"""The ledger and job settlement against a real PostgreSQL: atomic, idempotent, reconciled."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coordinator.billing import ledger, settlement
from coordinator.hosts import service as host_service
from coordinator.jobs import lifecycle, moves, service
from coordinator.runtime import Runtime
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.job_support import host_row, karma_events, make_island, statements_of


async def balance(runtime: Runtime, user_id: int) -> Decimal:
    async with runtime.db.session() as session:
        return Decimal(
            (
                await session.execute(text("SELECT credits FROM users WHERE id=:i"), {"i": user_id})
            ).scalar_one()
        )


async def test_debit_refuses_what_the_balance_does_not_cover(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime, credits=Decimal(5))
    async with runtime.db.transaction() as session:
        assert await ledger.debit(session, consumer.user.id, Decimal(6)) is None
        assert await ledger.debit(session, consumer.user.id, Decimal(5)) == Decimal(0)
    assert await balance(runtime, consumer.user.id) == 0
    async with runtime.db.session() as session:
        assert await ledger.unreconciled_users(session) == []


async def test_concurrent_debits_never_overdraw(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime, credits=Decimal(10))

    async def one() -> bool:
        async with runtime.db.transaction() as session:
            return await ledger.debit(session, consumer.user.id, Decimal(1)) is not None

    results = await asyncio.gather(*[one() for _ in range(25)])
    assert sum(results) == 10
    assert await balance(runtime, consumer.user.id) == 0
    async with runtime.db.session() as session:
        assert await ledger.unreconciled_users(session) == []


async def test_credit_with_an_idempotency_key_moves_money_once(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime, credits=Decimal(0))

    async def refund() -> Decimal | None:
        async with runtime.db.transaction() as session:
            return await ledger.credit(
                session, consumer.user.id, Decimal(3), type="refund", idempotency_key="refund:x"
            )

    results = await asyncio.gather(*[refund() for _ in range(5)])
    assert sorted(r is not None for r in results) == [False, False, False, False, True]
    assert await balance(runtime, consumer.user.id) == 3
    async with runtime.db.session() as session:
        row = (
            await session.execute(text("SELECT amount, balance_after FROM transactions WHERE type='refund'"))
        ).one()
        assert (row[0], row[1]) == (Decimal(3), Decimal(3))


async def test_settlement_refunds_the_unused_budget_and_records_one_earning(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime, "c@example.com", credits=Decimal(100))
    owner = await make_consumer(runtime, "owner@example.com", credits=Decimal(0))
    job_id, host_id = uuid.uuid4(), uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO hosts (id, owner_id) VALUES (:h, :o)"), {"h": host_id, "o": owner.user.id}
        )
        await session.execute(text("INSERT INTO workloads (slug, name) VALUES ('w', 'w')"))
        await session.execute(
            text(
                "INSERT INTO jobs (id, user_id, workload_id, input, budget) "
                "SELECT :j, :u, id, '{}'::jsonb, 10 FROM workloads WHERE slug='w'"
            ),
            {"j": job_id, "u": consumer.user.id},
        )
        assert (
            await ledger.debit(
                session, consumer.user.id, Decimal(10), job_id=job_id, idempotency_key=f"charge:{job_id}"
            )
            == 90
        )
    for _ in range(2):  # a duplicated success message settles once
        async with runtime.db.transaction() as session:
            await settlement.settle_success(
                session,
                job_id=job_id,
                user_id=consumer.user.id,
                budget=Decimal(10),
                clearing_price=Decimal(4),
                host_id=host_id,
                host_owner_id=owner.user.id,
            )
    assert await balance(runtime, consumer.user.id) == 96
    async with runtime.db.session() as session:
        earned = (
            await session.execute(text("SELECT earnings_total FROM hosts WHERE id=:h"), {"h": host_id})
        ).scalar_one()
        assert earned == 4
        assert await ledger.unreconciled_users(session) == []
    # A later failure path cannot refund again: the refund key is taken.
    async with runtime.db.transaction() as session:
        moved = await settlement.refund_in_full(
            session, job_id=job_id, user_id=consumer.user.id, amount=Decimal(10), reason="late failure"
        )
    assert moved is None
    assert await balance(runtime, consumer.user.id) == 96


async def _running_jobs(runtime: Runtime, consumer: Consumer, island_id: uuid.UUID, count: int) -> list[Any]:
    jobs = [
        await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
        for _ in range(count)
    ]
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "UPDATE jobs SET state = 'running', host_id = :h, attempt = 1, clearing_price = 1.5"
                " WHERE id = ANY(:ids)"
            ),
            {"h": island_id, "ids": [job.id for job in jobs]},
        )
    return jobs


async def test_the_finish_statement_holds_the_locks_its_settlement_relies_on(runtime: Runtime) -> None:
    # The settlement credits and the karma is written without lock statements of their own
    # (`ledger.CREDIT_CTES`, `karma.locked_karma_sql`): the finish statement took both locks. Another
    # transaction cannot take the rows until this one commits.
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime, "lock@example.com")
    (job,) = await _running_jobs(runtime, consumer, island.id, 1)
    async with runtime.db.transaction() as session:
        moved = await lifecycle.PgStore(session).apply(
            moves.SUCCEED, job.id, lifecycle.Inputs(host_id=island.id)
        )
        assert moved is not None
        with pytest.raises(DBAPIError, match="could not obtain lock"):
            async with runtime.db.transaction() as other:
                await other.execute(
                    text("SELECT 1 FROM users WHERE id = :u FOR NO KEY UPDATE NOWAIT"),
                    {"u": consumer.user.id},
                )
        # and a success's Island, whose karma it read for `job_succeeded`
        assert moved.karma_state is not None and moved.karma_state["duplicate"] is False
        with pytest.raises(DBAPIError, match="could not obtain lock"):
            async with runtime.db.transaction() as other:
                await other.execute(
                    text("SELECT 1 FROM hosts WHERE id = :h FOR NO KEY UPDATE NOWAIT"), {"h": island.id}
                )
    async with runtime.db.transaction() as other:  # committed: free again
        await other.execute(
            text("SELECT 1 FROM users WHERE id = :u FOR NO KEY UPDATE NOWAIT"), {"u": consumer.user.id}
        )


async def test_the_locks_of_a_finish_and_of_a_pass_do_not_hold_up_rows_that_only_refer_to_them(
    runtime: Runtime,
) -> None:
    # Every lock the jobs engine takes on a job's or an Island's row is FOR NO KEY UPDATE: it serialises
    # the engine's own decisions (the finish above, a pass's slot count) and leaves alone the KEY SHARE
    # lock a foreign key check takes. An output flush storing events of a job that is finishing, and an
    # assignment to an Island whose success is settling, go on at once (with FOR UPDATE they queued
    # behind the transaction, and a flush of many jobs' events behind every one of them).
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime, "refer@example.com")
    (finishing,) = await _running_jobs(runtime, consumer, island.id, 1)
    queued = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
    async with runtime.db.transaction() as session:
        assert await lifecycle.PgStore(session).apply(
            moves.SUCCEED, finishing.id, lifecycle.Inputs(host_id=island.id)
        )
        async with runtime.db.session() as other:  # rolled back when it closes
            await other.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait fails, never hangs
            await other.execute(
                text("INSERT INTO job_events (job_id, position, event) VALUES (:j, 1, '{}')"),
                {"j": finishing.id},
            )
            await other.execute(
                text("UPDATE jobs SET host_id = :h WHERE id = :j"), {"h": island.id, "j": queued.id}
            )
    async with runtime.db.transaction() as session:  # a pass's lock on the Island, held
        await session.execute(
            text(host_service.locked_hosts_sql("ARRAY[CAST(:h AS uuid)]")), {"h": island.id}
        )
        async with runtime.db.session() as other:
            await other.execute(text("SET LOCAL lock_timeout = '2s'"))
            await other.execute(
                text("UPDATE jobs SET host_id = :h WHERE id = :j"), {"h": island.id, "j": queued.id}
            )
            with pytest.raises(DBAPIError, match="could not obtain lock"):  # but the engine's own wait
                await other.execute(
                    text("SELECT 1 FROM hosts WHERE id = :h FOR NO KEY UPDATE NOWAIT"), {"h": island.id}
                )


async def test_a_success_writes_its_money_and_karma_in_one_statement_after_the_finish(
    runtime: Runtime,
) -> None:
    # Finish (both locks taken) + one settlement statement: refund, earning, earnings total, karma and
    # its event. Applied twice, the second changes nothing.
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime, "onestatement@example.com", credits=Decimal(100))
    (job,) = await _running_jobs(runtime, consumer, island.id, 1)
    async with runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE jobs SET started_at = now() - interval '150 minutes' WHERE id = :id"), {"id": job.id}
        )
    with statements_of(runtime) as seen:
        async with runtime.db.transaction() as session:
            inputs = lifecycle.Inputs(host_id=island.id)
            assert await lifecycle.transition_in(session, moves.SUCCEED, job.id, inputs) is not None
    assert len(seen) == 2, seen  # BEGIN and COMMIT are not cursor statements
    assert await balance(runtime, consumer.user.id) == Decimal(100) - 2 + Decimal("0.5")
    island_row = await host_row(runtime, island.id)
    assert island_row.earnings_total == Decimal("1.5")
    ((event, delta),) = await karma_events(runtime, island.id)
    assert event == "job_succeeded" and delta > 0 and island_row.karma == delta
    async with runtime.db.transaction() as session:  # the same success again: refused by the guard
        inputs = lifecycle.Inputs(host_id=island.id)
        assert await lifecycle.transition_in(session, moves.SUCCEED, job.id, inputs) is None
    async with runtime.db.transaction() as session:  # its settlement again: its keys refuse it
        again = await settlement.settle_success(
            session,
            job_id=job.id,
            user_id=consumer.user.id,
            budget=Decimal(2),
            clearing_price=Decimal("1.5"),
            host_id=island.id,
            host_owner_id=island_row.owner_id,
        )
        assert again.applied is False
    assert (await host_row(runtime, island.id)).earnings_total == Decimal("1.5")
    assert len(await karma_events(runtime, island.id)) == 1
    assert await balance(runtime, consumer.user.id) == Decimal(100) - 2 + Decimal("0.5")


async def test_settlements_racing_charges_on_one_balance_keep_its_ledger_a_chain(runtime: Runtime) -> None:
    # Each ledger row's balance_after is the previous row's plus its amount: no settlement credited from
    # a stale balance while submissions charged the same account.
    await seed_cargos(runtime)
    island = await make_island(runtime, max_concurrent=64)
    consumer = await make_consumer(runtime, "chain@example.com", credits=Decimal(1000))
    running = await _running_jobs(runtime, consumer, island.id, 10)  # 20 active jobs at most: the quota

    async def succeed(job_id: uuid.UUID) -> None:
        async with runtime.db.transaction() as session:
            inputs = lifecycle.Inputs(host_id=island.id)
            assert await lifecycle.transition_in(session, moves.SUCCEED, job_id, inputs) is not None

    async def charge() -> None:
        await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")

    await asyncio.gather(*[succeed(j.id) for j in running], *[charge() for _ in range(10)])
    async with runtime.db.session() as session:
        rows = (
            await session.execute(
                text("SELECT amount, balance_after FROM transactions WHERE user_id = :u ORDER BY id"),
                {"u": consumer.user.id},
            )
        ).all()
        assert await ledger.unreconciled_users(session) == []
    assert len(rows) == 1 + 10 + 10 + 10  # grant, first charges, refunds, racing charges
    for before, row in itertools.pairwise(rows):
        assert row.balance_after == before.balance_after + row.amount, rows
    assert (
        await balance(runtime, consumer.user.id)
        == rows[-1].balance_after
        == Decimal(1000) - 2 * 20 + Decimal("0.5") * 10  # each success refunds 2 - 1.5
    )
