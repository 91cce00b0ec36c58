"""The `started` reports of one JOB_STATUS pull batch start their jobs in one statement, each still only
by the Island it is assigned to, and the rest of the batch is applied in order after them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio

from coordinator.nats.status_consumer import StatusConsumerChild
from coordinator.protocol import subjects
from coordinator.telemetry import metrics
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.job_stack import JobStack, eventually, islands, job_stack, status_of, submit
from tests.job_support import assert_money_conserved, job_row, statements_of


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    # The status consumer is driven by the test, one pull batch at a time.
    async with job_stack(database_url, nats_url, leave_out=(StatusConsumerChild,)) as s:
        await seed_cargos(s.runtime)
        yield s


async def _assigned(stack: JobStack, consumer: Consumer, fleet: list[FakeIsland], count: int) -> list[str]:
    """`count` jobs assigned to the (silent) Islands, in submission order."""
    jobs = [await submit(stack, consumer) for _ in range(count)]

    async def received() -> bool:
        return sum(len(island.received) for island in fleet) == count

    await eventually(received)
    return jobs


def _island_of(fleet: list[FakeIsland], job_id: str) -> FakeIsland:
    return next(i for i in fleet if any(job["job_id"] == job_id for job in i.received))


async def _one_pull_batch(stack: JobStack, island: FakeIsland, reports: list[tuple[str, bytes]]) -> list[str]:
    """Publish the reports (sender host id, payload), pull them as one batch and apply it the way the
    status consumer does; the SQL statements it sent."""
    js = island._nc.jetstream()
    for host_id, payload in reports:
        await js.publish(f"host.{host_id}.status", payload, stream=subjects.STATUS_STREAM)
    child = StatusConsumerChild(stack.runtime)
    await child.setup()  # the durable consumer
    pull = await js.pull_subscribe_bind(durable=subjects.STATUS_CONSUMER, stream=subjects.STATUS_STREAM)
    try:
        msgs = await pull.fetch(len(reports), timeout=5)
        assert len(msgs) == len(reports)
        with statements_of(stack.runtime) as seen:
            await child.process_batch(msgs)

        async def acknowledged() -> bool:  # (an ack is published, not awaited)
            info = await js.consumer_info(subjects.STATUS_STREAM, subjects.STATUS_CONSUMER)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(acknowledged)  # the whole batch
    finally:
        await pull.unsubscribe()
        await child.teardown()
    return seen


def _status(job_id: str, state: str, error: str | None = None) -> bytes:
    body = f'"job_id":"{job_id}","state":"{state}","timestamp":1'
    return ("{" + body + (f',"error":"{error}"' if error else "") + "}").encode()


async def test_starts_of_one_pull_batch_are_one_statement_and_the_rest_follows_in_order(
    stack: JobStack, nats_url: str
) -> None:
    fleet = await islands(stack, nats_url, "silent", "silent")
    consumer = await make_consumer(stack.runtime)
    a, b, c, d = await _assigned(stack, consumer, fleet, 4)
    impostor = uuid.uuid4()
    malformed = metrics.nats_malformed.labels(subject_class="status")
    rejected = metrics.nats_rejected.labels(subject_class="status", reason="not_assigned")
    malformed_before, rejected_before = malformed._value.get(), rejected._value.get()
    try:
        seen = await _one_pull_batch(
            stack,
            fleet[0],
            [
                (_island_of(fleet, a).id, _status(a, "started")),
                (_island_of(fleet, b).id, _status(b, "streaming")),
                (str(impostor), _status(c, "started")),  # another Island's job
                (fleet[0].id, b"not json"),
                (_island_of(fleet, a).id, _status(a, "failed", "Container crash")),  # after its start
                (_island_of(fleet, d).id, _status(d, "started")),
            ],
        )
        starts = [s for s in seen if "started_at = COALESCE" in s]
        assert len(starts) == 1, starts  # a, b and d in one UPDATE
        assert (await status_of(stack, consumer, b))["status"] == "running"
        assert (await status_of(stack, consumer, d))["status"] == "running"
        assert (await job_row(stack.runtime, c)).state == "assigned"  # untouched by the impostor
        failed = await job_row(stack.runtime, a)
        assert failed.state == "failed" and failed.started_at is not None
        assert malformed._value.get() == malformed_before + 1
        assert rejected._value.get() == rejected_before + 1
        await assert_money_conserved(stack.runtime)
    finally:
        for island in fleet:
            await island.stop()


async def test_a_redelivered_batch_of_starts_changes_nothing(stack: JobStack, nats_url: str) -> None:
    """As after a crash between the statement and the acks: the same starts again are refused by the
    guard and only touch the leases."""
    fleet = await islands(stack, nats_url, "silent", "silent")
    consumer = await make_consumer(stack.runtime)
    jobs = await _assigned(stack, consumer, fleet, 3)
    reports = [(_island_of(fleet, j).id, _status(j, "started")) for j in jobs]
    try:
        await _one_pull_batch(stack, fleet[0], reports)
        first = {j: (await job_row(stack.runtime, j)).started_at for j in jobs}
        assert all(first.values())
        await _one_pull_batch(stack, fleet[0], reports)
        for job_id in jobs:
            row = await job_row(stack.runtime, job_id)
            assert row.state == "running" and row.started_at == first[job_id] and row.attempt == 1
    finally:
        for island in fleet:
            await island.stop()
