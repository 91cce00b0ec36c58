"""The output accumulator per runtime convention (island-protocol §4.7–4.9), against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from coordinator.jobs.events import JobRef
from coordinator.jobs.output_check import INCOMPLETE_OUTPUT
from coordinator.pubsub import Subscription, job_topic
from coordinator.repo.database import Database
from tests.factories import make_consumer
from tests.job_support import statements_of
from tests.stream_support import Stack, finish, job_of, running_job, set_runtime, stream_stack


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as s:
        yield s


async def drain(sub: Subscription, until_final: bool = True, wait: float = 3.0) -> list[dict[str, Any]]:
    """Every event delivered to a subscriber (up to the final one), with its position checked."""
    events: list[dict[str, Any]] = []
    positions: list[int] = []
    while True:
        event = await sub.get(wait)
        if event is None:
            assert not until_final, f"no final event; got {events}"
            break
        positions.append(event.position)
        events.append(event.payload)
        if until_final and event.is_final:
            break
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    return events


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def stored(stack: Stack, ref: JobRef) -> list[tuple[int, dict[str, Any]]]:
    await stack.accumulator.flush()
    async with stack.runtime.db.session() as session:
        rows = await session.execute(
            text("SELECT position, event FROM job_events WHERE job_id = :id ORDER BY position"),
            {"id": ref.job_id},
        )
        return [(int(r[0]), r[1]) for r in rows]


async def test_container_chunks_are_ordered_by_seq_and_the_empty_final_chunk_ends_the_text(
    stack: Stack,
) -> None:
    sub = stack.runtime.pubsub.subscribe(job_topic((ref := await running_job(stack)).job_id))
    sink = stack.accumulator
    await sink.on_output(ref, 3, "c", False)
    await sink.on_output(ref, 1, "a", False)
    await sink.on_output(ref, 1, "a", False)  # duplicate
    await sink.on_output(ref, 2, "b", False)
    await sink.on_output(ref, 4, "", True)
    await finish(stack, ref)
    events = await drain(sub)
    assert kinds(events) == ["token", "token", "token", "status", "done"]
    assert [e["content"] for e in events[:3]] == ["a", "b", "c"]
    assert events[3] == {"type": "status", "status": "completed"}
    assert events[4]["usage"] == {
        "prompt_tokens": 1,  # "Hi", estimated
        "completion_tokens": 3,  # the token chunks
        "total_tokens": 4,
        "credits_used": 1.0,
        "tokens_source": "counted",
    }
    job = await job_of(stack.runtime, ref.job_id)
    assert job.output == "abc"
    assert job.usage == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
        "tokens_source": "counted",
    }
    rows = await stored(stack, ref)
    # Everything since assignment, stored in order with contiguous positions: queued, running, tokens…
    assert [p for p, _ in rows] == list(range(1, len(rows) + 1))
    assert [e for _, e in rows][-5:] == events
    assert [e["status"] for _, e in rows[:2]] == ["queued", "running"]


async def test_gguf_done_chunk_gives_usage_and_is_not_text(stack: Stack) -> None:
    await set_runtime(stack.runtime, "llm-chat", "llmcpp")
    ref = await running_job(stack)
    sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
    sink = stack.accumulator
    await sink.on_output(ref, 0, "Hel", False)
    await sink.on_output(ref, 1, "lo", False)
    await sink.on_output(ref, 2, '{"type":"done","usage":{"completion_tokens":2}}', True)
    await finish(stack, ref)
    events = await drain(sub)
    assert [e.get("content") for e in events if e["type"] == "token"] == ["Hel", "lo"]
    assert events[-1] == {
        "type": "done",
        "usage": {
            "prompt_tokens": 0,
            "completion_tokens": 2,
            "total_tokens": 2,
            "credits_used": 1.0,
            "tokens_source": "island",
        },
    }
    job = await job_of(stack.runtime, ref.job_id)
    assert job.output == "Hello"
    assert job.usage == {"completion_tokens": 2, "total_tokens": 2, "tokens_source": "island"}


async def test_onnx_single_final_chunk_is_the_json_result(stack: Stack) -> None:
    ref = await running_job(stack, "sentiment", {"text": "great"})
    result = '{"label":"LABEL_1","score":0.98,"scores":[0.02,0.98],"task":"text-classification"}'
    await stack.accumulator.on_output(ref, 0, result, True)
    await finish(stack, ref)
    job = await job_of(stack.runtime, ref.job_id)
    assert job.output == result
    assert json.loads(job.output)["label"] == "LABEL_1"


async def test_terminal_status_overtaking_output_waits_for_the_last_chunks(stack: Stack) -> None:
    ref = await running_job(stack)
    sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
    sink = stack.accumulator
    await sink.on_output(ref, 1, "one ", False)
    success = asyncio.create_task(finish(stack, ref))  # `succeeded` processed before the last chunks
    await asyncio.sleep(0.1)
    assert (await job_of(stack.runtime, ref.job_id)).state == "running"  # the success waits for them
    await sink.on_output(ref, 3, "three", False)
    await sink.on_output(ref, 2, "two ", False)
    await sink.on_output(ref, 4, "", True)
    await success
    events = await drain(sub)
    assert kinds(events) == ["token", "token", "token", "status", "done"]
    assert "".join(e["content"] for e in events[:3]) == "one two three"
    assert (await job_of(stack.runtime, ref.job_id)).output == "one two three"


async def test_diffusers_progress_after_the_image_does_not_break_order_or_finalisation(stack: Stack) -> None:
    await set_runtime(stack.runtime, "sdxl", "diffusers")
    ref = await running_job(stack, "sdxl", {"prompt": "a cat"})
    sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
    sink = stack.accumulator
    await sink.on_progress(ref, 0, 3)
    await sink.on_progress(ref, 2, 3)  # fire-and-forget steps arrive out of order
    await sink.on_progress(ref, 1, 3)
    await sink.on_image(ref, "iVBORw0KGgo=", "png", 512, 512, 7)
    await finish(stack, ref)
    await sink.on_progress(ref, 3, 3)  # straggler after the image and `succeeded`
    events = await drain(sub)
    assert kinds(events) == ["progress", "progress", "progress", "image", "status", "done"]
    assert events[3] == {
        "type": "image",
        "image_data": "iVBORw0KGgo=",
        "format": "png",
        "width": 512,
        "height": 512,
        "seed": 7,  # TS ImageResult.seed / Python ImageResult.seed
    }
    assert await sub.get(0.3) is None  # nothing after `done`
    job = await job_of(stack.runtime, ref.job_id)
    assert json.loads(job.output or "") == {
        "image_data": "iVBORw0KGgo=",
        "format": "png",
        "width": 512,
        "height": 512,
        "seed": 7,
    }


async def test_a_success_whose_output_stays_incomplete_fails_after_the_gap_grace(database_url: str) -> None:
    async with stream_stack(database_url, output_gap_grace_seconds=0.5) as stack:
        ref = await running_job(stack)
        sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
        await stack.accumulator.on_output(ref, 1, "partial", False)
        await stack.accumulator.on_output(ref, 3, " tail", False)  # seq 2 and the final chunk are lost
        started = asyncio.get_running_loop().time()
        await finish(stack, ref)
        waited = asyncio.get_running_loop().time() - started
        events = await drain(sub)
        assert kinds(events) == ["token", "token", "status", "error"]
        assert events[-1]["error"] == INCOMPLETE_OUTPUT
        assert waited >= 0.5 * 0.9
        job = await job_of(stack.runtime, ref.job_id)
        assert (job.state, job.output, job.error) == ("failed", "partial", INCOMPLETE_OUTPUT)


async def test_a_success_waits_past_the_grace_while_the_output_consumer_lags(database_url: str) -> None:
    """Chunks still queued behind a lagging JOB_OUTPUT consumer are not lost: the success waits for them
    (and completes); once the consumer has drained, a chunk still missing is."""
    import time

    async with stream_stack(database_url, output_gap_grace_seconds=0.3) as stack:
        ref = await running_job(stack)
        await stack.accumulator.on_output(ref, 1, "partial", False)
        stack.runtime.output_drained_at = time.monotonic() - 10  # lagging since before the status
        success = asyncio.create_task(finish(stack, ref))
        await asyncio.sleep(0.6)  # twice the grace
        await stack.accumulator.on_output(ref, 2, " tail", False)
        await stack.accumulator.on_output(ref, 3, "", True)
        await asyncio.wait_for(success, 5)
        job = await job_of(stack.runtime, ref.job_id)
        assert (job.state, job.output) == ("succeeded", "partial tail")

        lost = await running_job(stack)
        await stack.accumulator.on_output(lost, 1, "half", False)
        stack.runtime.output_drained_at = time.monotonic() - 10
        failing = asyncio.create_task(finish(stack, lost))
        await asyncio.sleep(0.4)
        stack.runtime.output_drained_at = time.monotonic()  # caught up: the rest is not coming
        await asyncio.wait_for(failing, 5)
        job = await job_of(stack.runtime, lost.job_id)
        assert (job.state, job.error) == ("failed", INCOMPLETE_OUTPUT)


async def test_failure_ends_with_an_error_event_carrying_the_islands_message(stack: Stack) -> None:
    ref = await running_job(stack)
    sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
    await stack.accumulator.on_output(ref, 1, "x", False)
    await finish(stack, ref, "failed", error="Container crash: General error (application failure)")
    await stack.accumulator.on_output(ref, 2, "late", False)
    events = await drain(sub)
    assert events == [
        {"type": "token", "content": "x"},
        {"type": "status", "status": "failed"},
        {"type": "error", "error": "Container crash: General error (application failure)"},
    ]
    assert await sub.get(0.2) is None


async def test_positions_continue_after_a_restart_of_the_accumulator(stack: Stack) -> None:
    from coordinator.jobs.output import OutputAccumulator

    ref = await running_job(stack)
    await stack.accumulator.on_output(ref, 1, "a", False)
    before = await stored(stack, ref)
    fresh = OutputAccumulator(stack.runtime)
    await fresh.on_status(ref, "running")
    await fresh.flush()
    after = await stored(stack, ref)
    assert [p for p, _ in after] == list(range(1, len(before) + 2))
    assert after[-1][1] == {"type": "status", "status": "running"}


async def test_the_result_waits_for_the_last_chunks_when_the_status_overtook_them(stack: Stack) -> None:
    ref = await running_job(stack)
    sink = stack.accumulator
    await sink.on_output(ref, 1, "to", False)

    async def late_chunks() -> None:
        await asyncio.sleep(0.1)
        await sink.on_output(ref, 2, "day", False)
        await sink.on_output(ref, 3, "", True)

    producer = asyncio.create_task(late_chunks())
    result = await sink.result(ref, 2.0)
    assert (result.output, result.complete) == ("today", True)
    await producer
    # Without its last piece, the wait is bounded and gives what has arrived.
    other = await running_job(stack)
    await sink.on_output(other, 1, "half", False)
    result = await sink.result(other, 0.1)
    assert (result.output, result.complete) == ("half", False)


async def test_idle_streams_are_forgotten_once_stored(stack: Stack) -> None:
    ref = await running_job(stack)
    await stack.accumulator.on_output(ref, 1, "a", False)
    assert stack.accumulator.sweep_idle(0.0) == 0  # buffered events are never dropped
    await stack.accumulator.flush()
    assert stack.accumulator.sweep_idle(0.0) == 1
    assert stack.accumulator.pending(ref.job_id) == []


async def test_a_replica_taking_a_stream_over_continues_it_live_and_keeps_the_earlier_output(
    stack: Stack,
) -> None:
    """The stream owner died after two chunks: the next owner's accumulator starts from the stored events,
    emits the third chunk at once (not held for seqs it will never see) and assembles the whole output."""
    from coordinator.jobs.output import OutputAccumulator

    ref = await running_job(stack)
    await stack.accumulator.on_output(ref, 1, "Once", False)
    await stack.accumulator.on_output(ref, 2, " upon", False)
    await stack.accumulator.flush()  # what the dead owner had stored
    heir = stack.runtime.output = OutputAccumulator(stack.runtime)
    sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
    await heir.on_output(ref, 3, " a time", False)
    assert (await sub.get(1.0)).payload == {"type": "token", "content": " a time"}  # type: ignore[union-attr]
    await heir.on_output(ref, 4, "", True)
    assert (await heir.result(ref, 1.0)).output == "Once upon a time"
    await finish(stack, ref)
    events = await drain(sub)
    assert kinds(events)[-1] == "done"
    await heir.flush()
    assert (await job_of(stack.runtime, ref.job_id)).output == "Once upon a time"
    positions = [p for p, _ in await stored(stack, ref)]
    assert positions == list(range(1, len(positions) + 1))  # one sequence across both owners
    # A late duplicate reaching yet another replica after the end changes nothing.
    late = OutputAccumulator(stack.runtime)
    await late.on_output(ref, 3, " a time", False)
    await late.flush()
    assert [p for p, _ in await stored(stack, ref)] == positions


async def test_an_image_without_an_island_seed_returns_the_seed_the_input_gave(stack: Stack) -> None:
    await set_runtime(stack.runtime, "sdxl", "diffusers")
    # The SDKs' generate_image(seed=42) input; the Island reports no seed.
    ref = await running_job(stack, "sdxl", {"prompt": "a cat", "width": 512, "height": 512, "seed": 42})
    sub = stack.runtime.pubsub.subscribe(job_topic(ref.job_id))
    await stack.accumulator.on_image(ref, "iVBORw0KGgo=", "png", 512, 512, None)
    await finish(stack, ref)
    events = await drain(sub)
    image = next(e for e in events if e["type"] == "image")
    assert image["seed"] == 42
    job = await job_of(stack.runtime, ref.job_id)
    # Python ImageResult.seed = json.loads(job.output).get("seed"); TS ImageResult.seed = output.seed.
    assert json.loads(job.output or "")["seed"] == 42


async def test_a_straggler_from_the_island_a_job_was_requeued_away_from_never_joins_the_next_attempt(
    stack: Stack,
) -> None:
    """A chunk the first Island sent before its lease was lost can be applied after the requeue (it was
    authorized just before, or JOB_OUTPUT redelivered it to a restarted coordinator): it is dropped, and
    the output is the next attempt's alone."""
    import dataclasses
    import uuid

    first = await running_job(stack)
    sink = stack.accumulator
    await sink.on_output(first, 1, "stale ", False)
    await sink.on_status(dataclasses.replace(first, host_id=None), "pending")  # requeued
    await sink.on_output(first, 2, "straggler", False)  # the dead attempt, late
    second = dataclasses.replace(first, host_id=uuid.uuid4())
    await sink.on_status(second, "queued")
    await sink.on_output(second, 1, "fresh", False)
    await sink.on_output(first, 3, "", True)  # its final chunk must not end the next attempt either
    assert (await sink.result(second, 0.1)).complete is False
    await sink.on_output(second, 2, "", True)
    result = await sink.result(second, 1.0)
    assert (result.output, result.complete) == ("fresh", True)


async def test_what_waits_for_the_store_runs_after_a_flush_stored_it_and_not_after_a_failed_one(
    stack: Stack,
) -> None:
    # The output consumer acknowledges a batch so: an unacknowledged chunk is redelivered, a stored one
    # is never lost.
    ref = await running_job(stack)
    sink = stack.accumulator
    await sink.on_output(ref, 0, "one ", False)
    seen: list[int] = []

    async def count_stored() -> None:
        async with stack.runtime.db.read() as session:
            count = await session.scalar(
                text("SELECT count(*) FROM job_events WHERE job_id = :id"), {"id": ref.job_id}
            )
        seen.append(int(count or 0))

    sink.when_stored(count_stored)
    buffered = len(sink.pending(ref.job_id))
    assert seen == [] and buffered > 0
    database = stack.runtime.db
    stack.runtime.db = Database(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", raw_timeout=0.5
    )  # unreachable
    try:
        with pytest.raises(OperationalError):
            await sink.flush()
    finally:
        await stack.runtime.db.dispose()
        stack.runtime.db = database
    assert seen == []  # not stored: still waiting
    await sink.flush()
    assert seen == [buffered]  # ran once its events were stored
    await sink.flush()
    assert seen == [buffered]  # and only once


async def test_a_replay_reads_the_store_only_when_this_stream_stored_events_after_the_position(
    stack: Stack,
) -> None:
    ref = await running_job(stack)  # assigned (a new stream, made here) and started
    sink = stack.accumulator
    await sink.on_output(ref, 1, "a", False)
    await sink.flush()
    await sink.on_output(ref, 2, "b", False)
    upto = sink._streams[ref.job_id].stored_upto
    assert upto is not None and upto >= 1
    with statements_of(stack.runtime) as unread:
        unstored = await sink.replay(ref.job_id, after=upto)  # decided with nothing in between
    with statements_of(stack.runtime) as read:
        everything = await sink.replay(ref.job_id)
    assert unread == [] and len(read) == 1
    assert [e.position for e in everything] == list(range(1, len(everything) + 1))
    assert [e for e in everything if e.position > upto] == unstored
    assert everything[-1].payload == {"type": "token", "content": "b"}


async def test_opening_the_stream_of_a_job_whose_events_are_made_here_needs_no_statement(
    stack: Stack,
) -> None:
    from coordinator.errors import NotFound
    from coordinator.jobs import service

    ref = await running_job(stack)
    with statements_of(stack.runtime) as seen:
        assert await service.stream_access(stack.runtime, stack.consumer.user, str(ref.job_id)) == (
            ref.job_id,
            False,
        )
    assert seen == []
    other = await make_consumer(stack.runtime, "someone-else@example.com")
    with pytest.raises(NotFound):  # anyone else: the database's answer, the same 404 as for no job
        await service.stream_access(stack.runtime, other.user, str(ref.job_id))
    await finish(stack, ref)
    _, maybe_terminal = await service.stream_access(stack.runtime, stack.consumer.user, str(ref.job_id))
    assert maybe_terminal
