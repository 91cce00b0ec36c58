"""Recovery: start timeouts requeue, overdue jobs time out (cancel, refund, karma), unplaceable jobs fail."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from sqlalchemy import text

from coordinator.jobs import recovery, service
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import dumps, now_ms
from tests.jetstream_support import handled, publish_status
from tests.job_stack import CHAT, eventually, islands, job_stack, status_of, submit, wait_status
from tests.job_support import assert_money_conserved, balance, job_row, karma_events, make_island


async def _no_cold_start(runtime: Runtime, **columns: int) -> None:
    sets = ", ".join(["cold_start_seconds = 0", *[f"{k} = {int(v)}" for k, v in columns.items()]])
    async with runtime.db.transaction() as session:
        await session.execute(text(f"UPDATE workloads SET {sets}"))


async def test_an_assignment_never_started_is_requeued_without_penalty(
    database_url: str, nats_url: str
) -> None:
    async with job_stack(database_url, nats_url, job_start_timeout_seconds=1) as stack:
        await seed_cargos(stack.runtime)
        await _no_cold_start(stack.runtime)
        (silent,) = await islands(stack, nats_url, "silent")
        consumer = await make_consumer(stack.runtime)
        job_id = await submit(stack, consumer)
        await eventually(lambda: asyncio.sleep(0, bool(silent.received)))
        (worker,) = await islands(stack, nats_url, "succeed")
        try:
            job = await wait_status(stack, consumer, job_id, "completed")
            assert job["placement"]["host_id"] == worker.id and job["attempt"] == 2
            assert await karma_events(stack.runtime, silent.host_id) == []
        finally:
            await silent.stop()
            await worker.stop()


async def test_a_job_past_its_maximum_duration_times_out(database_url: str, nats_url: str) -> None:
    async with job_stack(database_url, nats_url) as stack:
        await seed_cargos(stack.runtime)
        await _no_cold_start(stack.runtime, max_duration_seconds=1)
        (island,) = await islands(stack, nats_url, "hang")
        consumer = await make_consumer(stack.runtime)
        try:
            job_id = await submit(stack, consumer)
            job = await wait_status(stack, consumer, job_id, "timeout")
            assert job["usage"]["credits_used"] == 0.0
            await eventually(lambda: asyncio.sleep(0, job_id in island.cancels))
            assert await karma_events(stack.runtime, island.host_id) == [("timeout", -1)]
            assert await balance(stack.runtime, consumer.user.id) == Decimal(10000)
            late = dumps({"job_id": job_id, "state": "succeeded", "timestamp": now_ms()})
            await handled(island._nc, await publish_status(island._nc, island.id, late))  # too late
            assert (await status_of(stack, consumer, job_id))["status"] == "timeout"
            await assert_money_conserved(stack.runtime)
        finally:
            await island.stop()


async def test_a_queued_job_no_island_can_run_any_more_fails_with_a_refund(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime)
    job = await service.submit_job(runtime, consumer.user, CHAT["workload"], CHAT["input"])
    assert (await recovery.retry_queued(runtime, waited_seconds=0)) == {"waiting": 1, "failed_unplaceable": 0}
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE hosts SET status = 'suspended' WHERE id = :id"), {"id": island.id})
    assert (await recovery.retry_queued(runtime, waited_seconds=0)) == {"waiting": 0, "failed_unplaceable": 1}
    row = await job_row(runtime, job.id)
    assert row.state == "failed" and row.error is not None and "No Island" in row.error
    assert await balance(runtime, consumer.user.id) == Decimal(10000)
    await assert_money_conserved(runtime)


async def test_the_sweep_is_idempotent_and_safe_without_nats(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    island = await make_island(runtime)
    consumer = await make_consumer(runtime)
    job = await service.submit_job(runtime, consumer.user, CHAT["workload"], CHAT["input"])
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "UPDATE jobs SET state = 'running', host_id = :h, attempt = 3, started_at = now(), "
                "lease_expires_at = now() - interval '1 second' WHERE id = :id"
            ),
            {"h": island.id, "id": job.id},
        )
    assert await recovery.sweep(runtime) == {
        "requeued": 0,
        "dead_lettered": 1,
        "timed_out": 0,
        "unplaceable": 0,
    }
    assert await recovery.sweep(runtime) == {
        "requeued": 0,
        "dead_lettered": 0,
        "timed_out": 0,
        "unplaceable": 0,
    }
    row = await job_row(runtime, job.id)
    assert row.state == "failed" and row.error == "dead-lettered after 3 attempts"
    assert await balance(runtime, consumer.user.id) == Decimal(10000)
