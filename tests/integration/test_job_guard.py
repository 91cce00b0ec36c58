"""The real guards on PostgreSQL: every move of `jobs/moves.py`, applied by the lifecycle engine's
`PgStore` to a job in a state the move does not start from, is refused by its guarded UPDATE — the row,
its money and its karma stay as they were."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text

from coordinator.jobs import lifecycle, moves, rules, service
from coordinator.jobs import repository as sql
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_support import job_row, karma_events, make_island, transactions_of

APPLIED_ONE_BY_ONE = [
    m for m in moves.MOVES.values() if m not in (moves.SUBMIT, moves.SUBMIT_PLACED, moves.ASSIGN)
]


async def _put(runtime: Runtime, job_id: Any, state: str, host_id: Any) -> None:
    async with runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE jobs SET state = :state, host_id = :host, attempt = 1 WHERE id = :id"),
            {"state": state, "host": None if state == rules.QUEUED else host_id, "id": job_id},
        )


def _snapshot(row: Any) -> tuple[Any, ...]:
    return (row.state, row.host_id, row.attempt, row.error, row.completed_at, row.updated_at, row.charged)


async def test_every_move_is_refused_from_every_state_it_does_not_start_from(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime, "guard@example.com")
    refused = 0
    for move in [*APPLIED_ONE_BY_ONE, moves.ASSIGN]:
        for source in (s for s in rules.STATES if s not in move.sources):
            job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
            await _put(runtime, job.id, source, island.id)
            before, money = await job_row(runtime, job.id), await transactions_of(runtime, job.id)
            for host_id in (None, island.id):
                async with runtime.db.transaction() as session:
                    if move is moves.ASSIGN:
                        row = sql.AssignRow(job.id, island.id, 60, None, Decimal(1))
                        assert await lifecycle.assign_in(session, [row], None) == ([], None), (
                            move.name,
                            source,
                        )
                        continue
                    inputs = lifecycle.Inputs(host_id=host_id, error="x", attempt=1, penalty="lease_expired")
                    result = await lifecycle.transition_in(session, move, job.id, inputs)
                assert result is None, (move.name, source, host_id)
            assert _snapshot(await job_row(runtime, job.id)) == _snapshot(before), (move.name, source)
            assert await transactions_of(runtime, job.id) == money, (move.name, source)
            refused += 1
            await _put(runtime, job.id, rules.CANCELLED, island.id)  # out of the active-job quota
    assert refused >= 40
    assert await karma_events(runtime, island.id) == []


async def test_the_guard_lets_an_allowed_move_through(runtime: Runtime) -> None:
    # The counterpart: the same call on an allowed move applies (the refusals above are the guard's).
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime, "guard-ok@example.com")
    job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
    async with runtime.db.transaction() as session:
        result = await lifecycle.transition_in(session, moves.CANCEL, job.id)
    assert result is not None
    assert (await job_row(runtime, job.id)).state == rules.CANCELLED
