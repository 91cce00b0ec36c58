"""No poison message: a status message nested too deep to parse (it used to raise RecursionError before
the ack and crash-loop the status consumer) is acknowledged, counted and dropped; the next job still runs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from coordinator.protocol import subjects
from coordinator.telemetry import metrics
from tests.factories import make_consumer, seed_cargos
from tests.job_stack import JobStack, eventually, islands, job_stack, submit, wait_status


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    async with job_stack(database_url, nats_url) as s:
        await seed_cargos(s.runtime)
        yield s


async def test_deeply_nested_status_messages_are_acked_and_the_consumer_keeps_going(
    stack: JobStack, nats_url: str
) -> None:
    (island,) = await islands(stack, nats_url, "succeed")
    consumer = await make_consumer(stack.runtime)
    malformed = metrics.nats_malformed.labels(subject_class="status")
    before = malformed._value.get()
    js = island._nc.jetstream()
    try:
        deep = b'{"job_id":"x","state":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        for _ in range(8):
            await js.publish(f"host.{island.id}.status", deep, stream=subjects.STATUS_STREAM)
        job_id = await submit(stack, consumer)
        await wait_status(stack, consumer, job_id, "completed")
        assert malformed._value.get() - before == 8

        async def all_acked() -> bool:
            info = await js.consumer_info(subjects.STATUS_STREAM, subjects.STATUS_CONSUMER)
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0

        await eventually(all_acked)
    finally:
        await island.stop()
