"""A publish that fails counts as an attempt; one that can never succeed (an AssignJob larger than the
NATS payload limit) fails the job at once with a full refund and the reason — no queued/assigned loop."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import nats
import pytest_asyncio
from sqlalchemy import text

from tests.factories import make_consumer, seed_cargos
from tests.job_stack import JobStack, islands, job_stack, submit, wait_status
from tests.job_support import assert_money_conserved, balance, transactions_of


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    # The HTTP body limit is raised above the NATS limit here, so the bus's own limit is what is tested.
    async with job_stack(
        database_url, nats_url, max_request_bytes=16 * 1024 * 1024, dispatch_interval_seconds=0.2
    ) as s:
        await seed_cargos(s.runtime)
        yield s


async def test_an_assignment_larger_than_the_bus_accepts_fails_the_job_with_a_refund(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "succeed")
    consumer = await make_consumer(stack.runtime)
    try:
        huge = {"workload": "llm-chat", "input": {"prompt": "x" * (9 * 1024 * 1024)}}
        job_id = await submit(stack, consumer, huge)
        job = await wait_status(stack, consumer, job_id, "failed")
        assert job["error"].startswith("assignment undeliverable:") and "max_payload" in job["error"]
        assert job["attempt"] == 1  # failed on its first try, not flipped between queued and assigned
        assert island.received == []
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10_000)
        assert [t for t, _ in await transactions_of(stack.runtime, uuid.UUID(job_id))] == ["charge", "refund"]
        await assert_money_conserved(stack.runtime)
    finally:
        await island.stop()


async def test_every_failed_publish_counts_toward_dead_lettering(stack: JobStack, nats_url: str) -> None:
    (island,) = await islands(stack, nats_url, "succeed")
    consumer = await make_consumer(stack.runtime)
    # A real failure: without the JOBS stream no server answers the JetStream publish.
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().delete_stream("JOBS")
    finally:
        await nc.close()
    try:
        job_id = await submit(stack, consumer)
        job = await wait_status(stack, consumer, job_id, "failed")
        assert job["attempt"] == 3
        assert job["error"] == "dead-lettered after 3 attempts (AssignJob publish failed)"
        assert await balance(stack.runtime, consumer.user.id) == Decimal(10_000)
        async with stack.runtime.db.session() as session:
            state = (
                await session.execute(text("SELECT state FROM jobs WHERE id = :id"), {"id": job_id})
            ).scalar_one()
        assert state == "failed"
        await assert_money_conserved(stack.runtime)
    finally:
        await island.stop()
