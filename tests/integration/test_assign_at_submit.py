"""A submit that finds nothing queued and an idle Island assigns the job in its own transaction (one
transaction, no dispatcher pass, the AssignJob sent before the submit returns); anything that makes that
assignment doubtful leaves the job queued for the dispatcher, with the charge made once and the Island's
reserved slot given back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import psycopg
import pytest
from nats.aio.client import Client
from sqlalchemy import text, update

from coordinator.config import libpq_url
from coordinator.jobs import rules
from coordinator.jobs import service as jobs
from coordinator.jobs.dispatcher import QUEUE_EMPTY, QUEUE_ENTERED, Dispatcher
from coordinator.nats.job_bus import NatsJobBus
from coordinator.nats.streams import ensure_streams
from coordinator.protocol.subjects import JOBS_STREAM, host_subject
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics
from coordinator.workloads.models import Workload
from tests.factories import make_consumer, seed_cargos
from tests.job_support import assert_money_conserved, job_row, make_island, statements_of, transactions_of


@pytest.fixture
async def dispatching(runtime: Runtime, nats_url: str) -> AsyncIterator[tuple[Dispatcher, Client]]:
    """A replica with its Island bus and dispatcher, whose last look found the queue empty."""
    await seed_cargos(runtime)
    nc = await nats.connect(nats_url)
    await ensure_streams(nc.jetstream(), 1)
    runtime.bus = NatsJobBus(nc, runtime.base_url)
    dispatcher = Dispatcher(runtime)
    await dispatcher.setup()
    assert await dispatcher.dispatch_batch() == 0
    assert dispatcher._queue == QUEUE_EMPTY
    try:
        yield dispatcher, nc
    finally:
        await nc.close()


async def test_a_submit_with_nothing_queued_assigns_the_job_to_an_idle_island_in_its_transaction(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client]
) -> None:
    dispatcher, nc = dispatching
    island = await make_island(runtime, max_concurrent=2, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    warm = await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "caches"})  # Cargo, rates
    assert warm.state == rules.ASSIGNED
    counted = metrics.assigned_at_submit._value.get()
    with statements_of(runtime) as seen:
        submitted = await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
    job = submitted.job
    assert metrics.assigned_at_submit._value.get() == counted + 1
    assert (job.state, job.host_id, job.attempt) == (rules.ASSIGNED, island.id, 1)
    assert job.placement is not None and job.placement["host_id"] == str(island.id)
    # Two statements, the submit's and the assignment's; no claim, no dispatcher pass woken.
    assert len(seen) == 2, seen
    assert "FOR NO KEY UPDATE OF h SKIP LOCKED" in seen[0] and "UPDATE jobs SET" in seen[1]
    assert dispatcher._queue == QUEUE_EMPTY
    row = await job_row(runtime, job.id)
    assert (row.state, row.host_id, row.attempt) == (rules.ASSIGNED, island.id, 1)
    assert row.stream_owner == runtime.pubsub.replica_id and row.lease_expires_at is not None
    assert row.clearing_price is not None and row.placement == job.placement
    assert await transactions_of(runtime, job.id) == [("charge", -row.budget)]
    assert island.reserved == 2
    # The AssignJob is on the Island's subject already.
    last = await nc.jetstream().get_last_msg(JOBS_STREAM, host_subject(str(island.id), "jobs"))
    assert last.data is not None and json.loads(last.data)["job_id"] == str(job.id)
    await assert_money_conserved(runtime)


async def test_a_submit_leaves_its_job_queued_behind_an_older_queued_one(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client]
) -> None:
    dispatcher, _ = dispatching
    consumer = await make_consumer(runtime)
    island = await make_island(runtime, max_concurrent=1, fleet=runtime.fleet)
    dispatcher.at_submit = False  # as if it had entered on another replica that does not assign at submit
    older = await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "first"})
    dispatcher.at_submit, dispatcher._queue = True, QUEUE_EMPTY  # and this replica's view missed it
    newer = (await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "second"})).job
    assert newer.state == rules.QUEUED and (await job_row(runtime, newer.id)).state == rules.QUEUED
    assert island.reserved == 0  # the slot planned for it is given back
    assert dispatcher._queue == QUEUE_ENTERED  # and the dispatcher is woken, as for any queued job
    assert await dispatcher.dispatch_batch() == 1
    assert (await job_row(runtime, older.id)).state == rules.ASSIGNED  # the older job goes first
    assert (await job_row(runtime, newer.id)).state == rules.QUEUED


async def test_a_submit_never_fills_an_island_beyond_the_databases_count(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client]
) -> None:
    dispatcher, _ = dispatching
    island = await make_island(runtime, max_concurrent=1, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    first = (await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "one"})).job
    assert first.state == rules.ASSIGNED
    island.reserved = 0  # this replica's view is behind (as if the job were another replica's)
    second = (await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "two"})).job
    assert second.state == rules.QUEUED and (await job_row(runtime, second.id)).state == rules.QUEUED
    assert island.reserved == 1  # the database's count now
    async with runtime.db.read() as session:
        active = await session.scalar(text("SELECT count(*) FROM jobs WHERE host_id = :h"), {"h": island.id})
    assert active == 1
    assert dispatcher._queue == QUEUE_ENTERED
    await assert_money_conserved(runtime)


async def test_a_submit_does_not_wait_for_an_island_row_locked_elsewhere(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client], database_url: str
) -> None:
    island = await make_island(runtime, max_concurrent=2, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as other, other.transaction():
        # The lock a pass of another replica holds (`hosts.service.locked_hosts_sql`).
        await other.execute("SELECT id FROM hosts WHERE id = %s FOR NO KEY UPDATE", (island.id,))
        submitting = jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
        job = (await asyncio.wait_for(submitting, 10)).job  # a wait on the row would never end
    assert job.state == rules.QUEUED and island.reserved == 0
    assert await transactions_of(runtime, job.id) == [("charge", -job.budget)]


async def test_an_assignment_that_fails_in_the_submits_transaction_costs_a_retry_not_the_job(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client]
) -> None:
    # A lease the database cannot hold (an int overflow): the assignment statement fails, the transaction
    # (charge included) rolls back, and the submit is made again without it.
    island = await make_island(runtime, max_concurrent=2, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Workload).where(Workload.slug == "llm-chat").values(cold_start_seconds=2**31 - 1)
        )
    before = runtime.catalogue.cached("llm-chat")
    job = (await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "hi"})).job
    assert before is None or runtime.catalogue.cached("llm-chat") != before
    assert job.state == rules.QUEUED and (await job_row(runtime, job.id)).state == rules.QUEUED
    assert island.reserved == 0
    assert await transactions_of(runtime, job.id) == [("charge", -job.budget)]
    await assert_money_conserved(runtime)


async def test_a_saved_bid_that_prices_the_job_otherwise_leaves_it_to_the_dispatcher(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client]
) -> None:
    from coordinator.billing import exchange

    island = await make_island(runtime, max_concurrent=2, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    cargo = runtime.catalogue.cached("llm-chat") or await runtime.catalogue.load(runtime.db, "llm-chat")
    async with runtime.db.transaction() as session:
        await exchange.save_bid(session, consumer.user.id, "llm-chat", cargo.price_per_job * 3)
    job = (await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "hi"})).job
    assert job.budget == cargo.price_per_job * 3  # the saved bid priced it, not the planned default
    assert job.state == rules.QUEUED and island.reserved == 0
    assert await transactions_of(runtime, job.id) == [("charge", -job.budget)]


async def test_a_submit_with_another_in_flight_leaves_the_placing_to_one_pass(
    runtime: Runtime, dispatching: tuple[Dispatcher, Client]
) -> None:
    dispatcher, _ = dispatching
    island = await make_island(runtime, max_concurrent=2, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    with dispatcher.submitting() as alone:  # another submit, still between its checks and its commit
        assert alone
        job = (await jobs.submit(runtime, consumer.user, "llm-chat", {"prompt": "hi"})).job
    assert job.state == rules.QUEUED and island.reserved == 0
    assert dispatcher._queue == QUEUE_ENTERED
    assert await dispatcher.dispatch_batch() == 1
    assert (await job_row(runtime, job.id)).state == rules.ASSIGNED
