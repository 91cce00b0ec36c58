"""When the dispatcher runs a pass: every entry to the queue wakes it; a freed Island slot wakes it only if
jobs may be waiting, so an idle queue costs no probe per finished job."""

from __future__ import annotations

import asyncio
import uuid

from coordinator.jobs import service as jobs
from coordinator.jobs.dispatcher import Dispatcher
from coordinator.runtime import Runtime
from tests.factories import make_consumer, seed_cargos
from tests.job_stack import islands, job_stack, submit, wait_status
from tests.job_support import job_row, make_island, statements_of


async def test_freed_capacity_wakes_the_dispatcher_only_when_jobs_may_be_waiting(runtime: Runtime) -> None:
    await seed_cargos(runtime)
    dispatcher = Dispatcher(runtime)
    await dispatcher.setup()
    consumer = await make_consumer(runtime)

    assert await dispatcher.dispatch_batch() == 0  # looked: nothing queued
    dispatcher._wake.clear()
    runtime.fleet.notify_capacity()
    assert not dispatcher._wake.is_set()

    # A submit (an entry to the queue) wakes it, and from then on freed slots do too.
    await make_island(runtime, max_concurrent=0, fleet=runtime.fleet)  # capable, but no free slot
    await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi", "max_tokens": 4})
    assert dispatcher._wake.is_set()
    dispatcher._wake.clear()
    runtime.fleet.notify_capacity()
    assert dispatcher._wake.is_set()

    # A pass that leaves the job waiting keeps listening for capacity.
    dispatcher._wake.clear()
    assert await dispatcher.dispatch_batch() == 0
    runtime.fleet.notify_capacity()
    assert dispatcher._wake.is_set()


async def test_a_pass_after_a_submit_claims_without_asking_whether_anything_is_queued(
    runtime: Runtime,
) -> None:
    await seed_cargos(runtime)
    dispatcher = Dispatcher(runtime)
    await dispatcher.setup()
    consumer = await make_consumer(runtime)
    await make_island(runtime, max_concurrent=0, fleet=runtime.fleet)  # capable, but no free slot
    with statements_of(runtime) as idle:
        assert await dispatcher.dispatch_batch() == 0
    assert [s for s in idle if "SELECT EXISTS" in s] and not [s for s in idle if "KEY UPDATE" in s], idle
    await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi", "max_tokens": 4})
    with statements_of(runtime) as woken:
        assert await dispatcher.dispatch_batch() == 0  # claimed, left waiting: no slot
    assert not [s for s in woken if "SELECT EXISTS" in s] and [s for s in woken if "SKIP LOCKED" in s], woken
    with statements_of(runtime) as again:  # nothing entered since: ask first again
        assert await dispatcher.dispatch_batch() == 0
    assert [s for s in again if "SELECT EXISTS" in s], again


async def test_a_finished_job_of_an_idle_queue_costs_the_dispatcher_no_pass(
    database_url: str, nats_url: str
) -> None:
    """A pass that places every job it claimed leaves nothing waiting: the slot its job frees when it
    succeeds wakes no pass (the interval is out of the way here), and the next submit, finding the queue
    empty and the Island idle, assigns its job itself: no pass either."""
    async with job_stack(database_url, nats_url, dispatch_interval_seconds=600) as stack:
        await seed_cargos(stack.runtime)
        (island,) = await islands(stack, nats_url, "succeed", delay=0.5)
        consumer = await make_consumer(stack.runtime)
        dispatcher = stack.runtime.dispatcher
        assert dispatcher is not None
        try:
            first = await submit(stack, consumer)
            await wait_status(stack, consumer, first, "running")  # assigned by a pass that placed all
            passes = dispatcher.passes
            await wait_status(stack, consumer, first, "completed")
            await asyncio.sleep(0.3)  # the freed slot, the Island's heartbeats
            assert dispatcher.passes == passes
            second = await submit(stack, consumer)
            await wait_status(stack, consumer, second, "completed")
            assert dispatcher.passes == passes
        finally:
            await island.stop()


async def test_a_submit_while_every_island_is_full_claims_only_the_new_job(runtime: Runtime) -> None:
    """With a backlog and no free slot, a submit's pass tells only the new job why it waits (the others
    keep theirs); a pass by rank, at least once per interval, renews them all."""
    await seed_cargos(runtime)
    dispatcher = Dispatcher(runtime)
    await dispatcher.setup()
    dispatcher.interval = 1.0
    consumer = await make_consumer(runtime)
    island = await make_island(runtime, max_concurrent=0, fleet=runtime.fleet)  # capable, but full
    older = [await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"}) for _ in range(3)]
    assert await dispatcher.dispatch_batch() == 0  # by rank: every job told why it waits

    async def reasons(job_ids: list[uuid.UUID]) -> list[str]:
        return [(await job_row(runtime, j)).placement["message"] for j in job_ids]

    busy = "Every Island online that can run this job is busy"
    assert await reasons([j.id for j in older]) == [busy] * 3
    runtime.fleet.remove(island.id)  # it went offline: no Island is online now
    newest = await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
    assert await dispatcher.dispatch_batch() == 0
    offline = "No Island is online to take it"
    assert await reasons([newest.id]) == [offline]
    assert await reasons([j.id for j in older]) == [busy] * 3  # not claimed again

    await asyncio.sleep(dispatcher.interval)
    await jobs.submit_job(runtime, consumer.user, "llm-chat", {"prompt": "hi"})
    assert await dispatcher.dispatch_batch() == 0  # the interval is up: by rank
    assert await reasons([j.id for j in older]) == [offline] * 3
