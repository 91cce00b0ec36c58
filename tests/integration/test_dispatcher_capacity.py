"""Two replicas dispatching at once share an Island's slots: the claim locks the candidate Islands' rows
and each pass counts their unfinished jobs only after the locks, so what the other replica has just
assigned is counted."""

from __future__ import annotations

import asyncio
import copy

import nats
from sqlalchemy import text

from coordinator.app import build_runtime
from coordinator.jobs import service as jobs
from coordinator.jobs.dispatcher import Dispatcher
from coordinator.nats.job_bus import NatsJobBus
from coordinator.nats.streams import ensure_streams
from coordinator.runtime import Runtime
from tests.conftest import make_settings
from tests.factories import make_consumer, seed_cargos
from tests.job_support import make_island, statements_of


async def test_two_replicas_dispatching_at_once_never_overfill_an_island(
    runtime: Runtime, database_url: str, nats_url: str
) -> None:
    await seed_cargos(runtime)
    other = build_runtime(make_settings(database_url))
    nc = await nats.connect(nats_url)
    try:
        await ensure_streams(nc.jetstream(), 1)
        for replica in (runtime, other):  # the AssignJobs are published (no Island reads them here)
            replica.bus = NatsJobBus(nc, replica.base_url)
        island = await make_island(runtime, max_concurrent=3, fleet=runtime.fleet)
        consumer = await make_consumer(runtime)
        for _ in range(9):
            await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi", "max_tokens": 4})
        other.fleet.put(copy.copy(island))  # its heartbeats reach each replica's own view
        here, there = Dispatcher(runtime), Dispatcher(other)
        for dispatcher in (here, there):
            await dispatcher.setup()
            dispatcher.batch_size = 3  # each claims jobs of its own (SKIP LOCKED), both want the Island
            dispatcher.wake()
        with statements_of(runtime) as seen:
            assigned = await asyncio.gather(here.dispatch_batch(), there.dispatch_batch())
        assert sum(assigned) == 3, assigned
        claim = next(s for s in seen if "SKIP LOCKED" in s)
        assert "FROM hosts WHERE id = ANY" in claim  # the Island is locked by the claim itself
        async with runtime.db.read() as session:
            assigned_now = await session.scalar(text("SELECT count(*) FROM jobs WHERE state = 'assigned'"))
        assert assigned_now == 3
    finally:
        await nc.close()
        await other.db.dispose()


async def test_a_pass_places_the_claimed_jobs_by_priority_then_age(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    await make_island(runtime, max_concurrent=1, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    submitted = [
        await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}, priority=priority)
        for priority in (0, 5, 5)
    ]
    dispatcher = Dispatcher(runtime)
    await dispatcher.setup()
    dispatcher.wake()
    assert await dispatcher.dispatch_batch() == 1  # one slot for three claimed jobs
    async with runtime.db.read() as session:
        # (No bus here: the publish fails and gives the job back, its attempt counted.)
        tried = (await session.execute(text("SELECT id FROM jobs WHERE attempt > 0"))).scalars().all()
    assert tried == [submitted[1].id]  # the older of the two high-priority jobs


async def test_a_pass_counts_the_islands_load_only_when_its_view_cannot_place_a_job(
    runtime: Runtime, nats_url: str
) -> None:
    # The view says the Island is full (its job ended on another replica, which consumed the status): the
    # pass counts under the lock and places the job. A pass its view places costs no count.
    await seed_cargos(runtime)
    island = await make_island(runtime, max_concurrent=1, fleet=runtime.fleet)
    consumer = await make_consumer(runtime)
    nc = await nats.connect(nats_url)
    try:
        await ensure_streams(nc.jetstream(), 1)
        runtime.bus = NatsJobBus(nc, runtime.base_url)
        dispatcher = Dispatcher(runtime)
        await dispatcher.setup()
        dispatcher.at_submit = False  # the jobs wait for the passes this test counts the statements of
        island.reserved = 1
        await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
        with statements_of(runtime) as stale:
            assert await dispatcher.dispatch_batch() == 1
        assert [s for s in stale if "count(*)" in s and "GROUP BY" in s], stale
        assert island.reserved == 1  # the count, with this pass's assignment

        other = await make_island(runtime, max_concurrent=1, fleet=runtime.fleet)
        await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
        with statements_of(runtime) as fresh:
            assert await dispatcher.dispatch_batch() == 1
        assert len(fresh) == 2, fresh  # the claim (with the locks) and the assignment (with the count)
        assert (island.reserved, other.reserved) == (1, 1)
    finally:
        await nc.close()
