"""Jobs end to end: HTTP submit → dispatcher → JetStream → fake Island → status/output → settlement."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import nats
import pytest_asyncio
from sqlalchemy import text

from coordinator.telemetry import metrics
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import FakeIsland, dumps, now_ms
from tests.jetstream_support import handled, publish_status
from tests.job_stack import CHAT, JobStack, eventually, islands, job_stack, status_of, submit, wait_status
from tests.job_support import (
    assert_money_conserved,
    balance,
    host_row,
    job_row,
    karma_events,
    make_island,
    transactions_of,
)


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    async with job_stack(database_url, nats_url, job_lease_seconds=1) as s:
        await seed_cargos(s.runtime)
        # No cold-start allowance in these tests, so a lost lease shows within a second.
        async with s.runtime.db.transaction() as session:
            await session.execute(text("UPDATE workloads SET cold_start_seconds = 0"))
        yield s


async def test_a_job_runs_end_to_end_and_the_unused_budget_is_refunded(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "succeed", asking_prices={"llm-chat": "0.4", "_default": "9"})
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        job = await wait_status(stack, consumer, job_id, "completed")
        assert job["output"] == "Hello"
        assert job["usage"]["credits_used"] == 0.4
        assert job["placement"]["host_id"] == island.id
        assert set(job["placement"]["terms"]) == {"warm", "speed", "fit", "headroom", "rtt", "karma", "price"}
        assert job["started_at"] and job["completed_at"] and job["duration_ms"] >= 0
        assert job["attempt"] == 1
        assigned = island.received[0]
        assert list(assigned)[:5] == ["job_id", "workload_id", "input", "lease_expires", "runtime_type"]
        assert assigned["job_id"] == job_id and assigned["workload_id"] == str(job["workload_id"])
        assert isinstance(assigned["lease_expires"], int) and assigned["runtime_type"] == "container"
        assert assigned["container_image"] and assigned["sandbox_tier"] == "elevated"
        assert assigned["input"] == CHAT["input"]
        assert await balance(stack.runtime, consumer.user.id) == Decimal("9999.6")
        moves = await transactions_of(stack.runtime, uuid.UUID(job_id))
        assert moves == [("charge", Decimal(-1)), ("refund", Decimal("0.6"))]
        assert (await host_row(stack.runtime, island.host_id)).earnings_total == Decimal("0.4")
        await assert_money_conserved(stack.runtime)
    finally:
        await island.stop()


async def test_an_impersonating_island_changes_nothing_and_is_penalised(
    stack: JobStack, nats_url: str
) -> None:
    (worker,) = await islands(stack, nats_url, "hang")
    impostor = FakeIsland(nats_url)
    await make_island(stack.runtime, host_id=impostor.host_id)  # known, but not assigned this job
    await impostor.start()
    consumer = await make_consumer(stack.runtime)
    rejected = metrics.nats_rejected.labels(subject_class="status", reason="not_assigned")
    before = rejected._value.get()
    try:
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "running")
        await impostor.publish("output", {"job_id": job_id, "seq": 1, "chunk": "pwned", "is_final": True})
        await impostor.status(job_id, "succeeded")
        await eventually(lambda: asyncio.sleep(0, rejected._value.get() > before))
        job = await status_of(stack, consumer, job_id)
        assert job["status"] == "running" and job["output"] is None
        assert await karma_events(stack.runtime, impostor.host_id) == [("impersonation", -5)]
        host = await host_row(stack.runtime, impostor.host_id)
        assert host.karma == -5 and host.flagged_for_review is True
        assert await karma_events(stack.runtime, worker.host_id) == []
    finally:
        await worker.stop()
        await impostor.stop()


async def test_a_lost_lease_requeues_on_another_island_and_purges_the_old_one(
    stack: JobStack, nats_url: str
) -> None:
    (lost,) = await islands(stack, nats_url, "hang")
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "running")
        # The Island vanishes; a stale AssignJob is still stored for it on JetStream.
        await lost.stop()
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.publish(f"host.{lost.id}.jobs", b'{"job_id":"stale"}', stream="JOBS")
        (rescuer,) = await islands(stack, nats_url, "succeed")
        job = await wait_status(stack, consumer, job_id, "completed")
        assert job["placement"]["host_id"] == rescuer.id and job["attempt"] == 2 and job["output"] == "Hello"
        row = await job_row(stack.runtime, job_id)
        assert row.excluded_host_ids == [lost.id]
        assert await karma_events(stack.runtime, lost.host_id) == [("lease_expired", -2)]
        info = await js.stream_info("JOBS", subjects_filter=f"host.{lost.id}.jobs")
        assert not (info.state.subjects or {}).get(f"host.{lost.id}.jobs")
        await nc.close()
        await assert_money_conserved(stack.runtime)
    finally:
        await rescuer.stop()


async def test_a_job_is_dead_lettered_after_three_attempts_and_refunded(
    stack: JobStack, nats_url: str
) -> None:
    fleet = await islands(stack, nats_url, "hang", "hang", "hang", "hang")
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        job = await wait_status(stack, consumer, job_id, "failed")
        assert job["error"] == "dead-lettered after 3 attempts"
        assert job["attempt"] == 3 and job["usage"]["credits_used"] == 0.0
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10000)
        tried = [i for i in fleet if i.received]
        assert len(tried) == 3  # three different Islands, the fourth never got it
        for island in tried:
            assert await karma_events(stack.runtime, island.host_id) == [("lease_expired", -2)]
        await assert_money_conserved(stack.runtime)
    finally:
        for island in fleet:
            await island.stop()


async def test_cancel_sends_cancel_job_refunds_and_ignores_a_late_success(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "hang")
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "running")
        response = await stack.http.delete(f"/api/v1/jobs/{job_id}", headers=consumer.headers)
        assert response.status_code == 200 and response.json()["data"]["status"] == "cancelled"
        await eventually(lambda: asyncio.sleep(0, job_id in island.cancels))
        # GGUF-style: the Island finishes anyway and reports success after the cancel.
        await island.publish("output", {"job_id": job_id, "seq": 0, "chunk": "late", "is_final": False})
        late = dumps({"job_id": job_id, "state": "succeeded", "timestamp": now_ms()})
        await handled(island._nc, await publish_status(island._nc, island.id, late))  # seen and acked
        job = await status_of(stack, consumer, job_id)
        assert job["status"] == "cancelled" and job["usage"]["credits_used"] == 0.0
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10000)
        moves = await transactions_of(stack.runtime, uuid.UUID(job_id))
        assert moves == [("charge", Decimal(-1)), ("refund", Decimal(1))]
        await assert_money_conserved(stack.runtime)
    finally:
        await island.stop()


async def test_an_island_failure_refunds_in_full_without_penalty(stack: JobStack, nats_url: str) -> None:
    (island,) = await islands(stack, nats_url, "fail")
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        job = await wait_status(stack, consumer, job_id, "failed")
        assert job["error"] == "Container crash: General error (application failure)"
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10000)
        assert await karma_events(stack.runtime, island.host_id) == []  # the Cargo crashed, not the Island
    finally:
        await island.stop()


async def test_malformed_messages_are_acknowledged_counted_and_harmless(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "succeed", delay=0.3)
    consumer = await make_consumer(stack.runtime)
    malformed = metrics.nats_malformed.labels(subject_class="status")
    before = malformed._value.get()
    try:
        for payload in (b"not json", b"[]", dumps({"job_id": 5, "state": "started"}), dumps({"job_id": "x"})):
            await island._nc.publish(f"host.{island.id}.status", payload)
        last = await publish_status(island._nc, island.id, dumps({"job_id": "x", "state": "exploded"}))
        await island._nc.publish(f"host.{island.id}.output", b"\xff\xfe")
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "completed")
        # Acknowledged, not redelivered: the consumer's ack floor is past them with nothing pending (a
        # nak'd message would be pending redelivery, and count again when it came back).
        await handled(island._nc, last)
        assert malformed._value.get() - before == 5
    finally:
        await island.stop()


async def _lease(stack: JobStack, job_id: str) -> Any:
    async with stack.runtime.db.session() as session:
        return (
            await session.execute(
                text(
                    "SELECT state, attempt, host_id, lease_expires_at, "
                    "EXTRACT(EPOCH FROM lease_expires_at - now()) AS ahead FROM jobs WHERE id = :id"
                ),
                {"id": job_id},
            )
        ).one()


async def test_lease_renewals_keep_a_long_job_on_its_island(stack: JobStack, nats_url: str) -> None:
    # The lease is 1 s; each renewal asks for 2 s more. The job runs for four leases only because every
    # renewal moves its expiry forward, and it is lost once the renewals stop.
    (island,) = await islands(stack, nats_url, "hang")
    consumer = await make_consumer(stack.runtime)
    loop = asyncio.get_running_loop()
    try:
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "running")
        previous = (await _lease(stack, job_id)).lease_expires_at
        until = loop.time() + 4
        renewals = 0
        while loop.time() < until:
            await island.publish("lease", {"job_id": job_id, "extend_seconds": 2})
            row = await eventually(lambda since=previous: _extended_past(stack, job_id, since), within=3)
            assert (row.state, row.attempt, row.host_id) == ("running", 1, island.host_id)
            assert 1.2 < row.ahead <= 2.1, row  # extended by the renewal's 2 s, not the 1 s lease
            previous, renewals = row.lease_expires_at, renewals + 1
            await asyncio.sleep(0.5)  # the pace of the renewals
        assert renewals >= 3
        job = await status_of(stack, consumer, job_id)
        assert job["status"] == "running" and job["attempt"] == 1
        assert await karma_events(stack.runtime, island.host_id) == []
        # No more renewals: the same lease runs out and the sweep takes the job from the Island.
        await eventually(
            lambda: _has_event(karma_events(stack.runtime, island.host_id), ("lease_expired", -2)), within=10
        )
        lost = await _lease(stack, job_id)
        assert lost.attempt >= 2 or lost.state != "running", lost
    finally:
        await island.stop()


async def _extended_past(stack: JobStack, job_id: str, previous: Any) -> Any:
    row = await _lease(stack, job_id)
    return row if row.lease_expires_at is not None and row.lease_expires_at > previous else None


async def _has_event(events: Any, event: tuple[str, int]) -> bool:
    return event in await events


async def test_a_cargo_no_assignment_can_express_fails_with_a_refund(stack: JobStack, nats_url: str) -> None:
    (island,) = await islands(stack, nats_url, "succeed")
    async with stack.runtime.db.transaction() as session:
        await session.execute(text("UPDATE workloads SET container_image = NULL WHERE slug = 'llm-chat'"))
    consumer = await make_consumer(stack.runtime)
    try:
        job_id = await submit(stack, consumer)
        job = await wait_status(stack, consumer, job_id, "failed")
        assert job["error"].startswith("Cargo cannot be dispatched")
        assert island.received == []  # never sent: the Island would have run its default image
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10000)
    finally:
        await island.stop()
