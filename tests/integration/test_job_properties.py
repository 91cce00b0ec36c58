"""Property: whatever the order of an Island's messages (duplicates, late success after a cancel, the
`completed` alias, an impostor), a job ends in exactly one terminal state and money is conserved."""

from __future__ import annotations

import uuid
import weakref
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from coordinator.jobs import repository as sql
from coordinator.jobs import rules, service
from coordinator.jobs.intake import JobIntake
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_support import assert_money_conserved, job_row, make_island, transactions_of

# What the examples of one test share: two Islands, a consumer and an intake, per runtime.
PREPARED: weakref.WeakKeyDictionary[Runtime, tuple[Any, Any, Any, JobIntake]] = weakref.WeakKeyDictionary()

EVENTS = ["started", "streaming", "succeeded", "completed", "failed", "cancelled", "owner_cancel", "impostor"]


def expected_state(events: list[str]) -> str:
    """The reference model of the state table for one assigned job."""
    state = rules.ASSIGNED
    for event in events:
        if rules.is_terminal(state) or event == "impostor":
            continue
        if event in ("started", "streaming"):
            state = rules.RUNNING
        elif event in ("succeeded", "completed"):
            state = rules.SUCCEEDED
        elif event == "failed":
            state = rules.FAILED
        else:
            state = rules.CANCELLED
    return state if rules.is_terminal(state) else rules.CANCELLED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=10))
async def test_any_message_order_ends_in_one_terminal_state_with_money_conserved(
    runtime: Runtime, events: list[str]
) -> None:
    if runtime not in PREPARED:  # once per runtime (the examples share the test's fixture)
        await seed_cargos(runtime)
        PREPARED[runtime] = (
            await make_island(runtime),
            await make_island(runtime),
            await make_consumer(runtime, f"p{uuid.uuid4().hex[:8]}@example.com"),
            # No output in these histories: do not wait for a final chunk that never comes.
            JobIntake(runtime),
        )
    island, impostor, consumer, intake = PREPARED[runtime]
    job = await service.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, budget="2")
    async with runtime.db.transaction() as session:
        move = sql.AssignRow(job.id, island.id, 60, {}, Decimal(1))
        await session.execute(sql.ASSIGN_MANY_SQL, sql.assign_many_params([move], None))
    for event in events:
        if event == "owner_cancel":
            await service.cancel_job(runtime, consumer.user, str(job.id))
        elif event == "impostor":
            await intake.status(impostor.id, str(job.id), "succeeded", None)
        else:
            await intake.status(island.id, str(job.id), event, "boom" if event == "failed" else None)
    final = await job_row(runtime, job.id)
    if not rules.is_terminal(final.state):
        await service.cancel_job(runtime, consumer.user, str(job.id))
        final = await job_row(runtime, job.id)
    assert final.state == expected_state(events)
    moves = await transactions_of(runtime, job.id)
    assert moves[0] == ("charge", Decimal(-2)) and [m[0] for m in moves].count("charge") == 1
    refunds = [amount for kind, amount in moves if kind == "refund"]
    if final.state == rules.SUCCEEDED:
        assert refunds == [Decimal(1)] and final.charged == Decimal(1)
    else:
        assert refunds == [Decimal(2)] and final.charged == Decimal(0)
    async with runtime.db.session() as session:
        earned = await session.scalar(
            text("SELECT count(*) FROM host_earnings WHERE job_id = :id"), {"id": job.id}
        )
    assert earned == (1 if final.state == rules.SUCCEEDED else 0)
    await assert_money_conserved(runtime)
