"""The real guard of the terminal moves (the guarded UPDATE of `jobs/service.finish_in` on PostgreSQL)
refuses every move the state table does not allow: the row, its money and its karma stay as they were."""

from __future__ import annotations

import itertools

from sqlalchemy import text

from coordinator.jobs import rules, service
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_support import job_row, make_island, transactions_of

ILLEGAL = [
    (source, target)
    for source, target in itertools.product(rules.STATES, sorted(rules.TERMINAL))
    if not rules.can_move(source, target)
]


async def test_every_illegal_terminal_move_is_refused_by_the_guarded_update(runtime: Runtime) -> None:
    assert {s for s, _ in ILLEGAL} >= rules.TERMINAL | {rules.QUEUED, rules.ASSIGNED}
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime, "guard@example.com")
    for source, target in ILLEGAL:
        job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
        async with runtime.db.transaction() as session:
            await session.execute(
                text("UPDATE jobs SET state = :state, host_id = :host WHERE id = :id"),
                {"state": source, "host": None if source == rules.QUEUED else island.id, "id": job.id},
            )
        before, money = await job_row(runtime, job.id), await transactions_of(runtime, job.id)
        for host_id in (None, island.id):
            async with runtime.db.transaction() as session:
                result = await service.finish_in(session, job.id, target, host_id=host_id, error="x")
            assert result is None, (source, target, host_id)
        after = await job_row(runtime, job.id)
        assert (after.state, after.error, after.completed_at, after.updated_at) == (
            before.state,
            before.error,
            before.completed_at,
            before.updated_at,
        ), (source, target)
        assert await transactions_of(runtime, job.id) == money, (source, target)


async def test_the_guard_lets_an_allowed_move_through(runtime: Runtime) -> None:
    # The counterpart: the same call on an allowed move applies (the refusals above are the guard's).
    await seed_cargos(runtime)
    await make_island(runtime)
    consumer = await make_consumer(runtime, "guard-ok@example.com")
    job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
    async with runtime.db.transaction() as session:
        result = await service.finish_in(session, job.id, rules.CANCELLED)
    assert result is not None
    assert (await job_row(runtime, job.id)).state == rules.CANCELLED
