"""`GET /api/v1/jobs/{id}/stream` over real HTTP, read as httpx-sse (py SDK) and as the js SDK reads it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest_asyncio

from coordinator.jobs.events import JobRef
from coordinator.jobs.output import OutputAccumulator
from coordinator.pubsub import Event, PubSub
from coordinator.web.sse import job_event_batches
from tests.factories import make_consumer
from tests.job_support import statements_of
from tests.stream_support import (
    Stack,
    finish,
    job_of,
    parse_like_js,
    read_like_py,
    read_raw,
    running_job,
    stream_stack,
)


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as s:
        yield s


def path(ref: JobRef) -> str:
    return f"/api/v1/jobs/{ref.job_id}/stream"


async def produce(
    stack: Stack, ref: JobRef, tokens: list[str], *, first_seq: int = 1, pause: float = 0
) -> None:
    for i, token in enumerate(tokens):
        await stack.accumulator.on_output(ref, first_seq + i, token, False)
        if pause:
            await asyncio.sleep(pause)


async def complete(stack: Stack, ref: JobRef, n_tokens: int, *, delay: float = 0) -> None:
    if delay:
        await asyncio.sleep(delay)
    await stack.accumulator.on_output(ref, n_tokens + 1, "", True)
    await finish(stack, ref)


def check_wire(raw: str) -> None:
    """client-api §7.2: bare `data: ` frames with one-line JSON, comments only as keep-alives."""
    assert "\r" not in raw
    assert raw.endswith("\n\n")
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: {") or block == ": keepalive", block
        assert "\n" not in block
    for forbidden in ("event:", "id:", "retry:", "[DONE]"):
        assert f"\n{forbidden}" not in "\n" + raw


async def test_replays_tokens_produced_before_connecting_then_follows_live_and_closes_after_done(
    stack: Stack,
) -> None:
    ref = await running_job(stack)
    await produce(stack, ref, ["Hel", "lo"])
    await stack.accumulator.flush()  # some stored …
    await produce(stack, ref, [","], first_seq=3)  # … and some still only in memory
    later = asyncio.create_task(produce(stack, ref, [" wor", "ld"], first_seq=4, pause=0.05))
    finisher = asyncio.create_task(complete(stack, ref, 5, delay=0.4))
    status, content_type, raw = await read_raw(stack.http, path(ref), stack.consumer.headers)
    await later
    await finisher
    assert status == 200
    assert content_type.startswith("text/event-stream")
    check_wire(raw)
    events = parse_like_js(raw)
    assert [e["type"] for e in events] == [
        "status",
        "status",
        "token",
        "token",
        "token",
        "token",
        "token",
        "status",
        "done",
    ]
    assert events[-1]["usage"]["total_tokens"] == 5 + 1  # five token chunks, "Hi" ≈ one prompt token
    assert events[-1]["usage"]["credits_used"] == 1.0
    tokens = "".join(e["content"] for e in events if e["type"] == "token")
    assert tokens == "Hello, world"
    job = await job_of(stack.runtime, ref.job_id)
    assert tokens == job.output


async def test_python_and_js_readers_see_the_same_events_and_ignore_keepalives(stack: Stack) -> None:
    ref = await running_job(stack)
    await produce(stack, ref, ["a"])
    # 0.2 s keep-alive interval: the silence below makes the server send comments.
    finisher = asyncio.create_task(complete(stack, ref, 1, delay=0.7))
    status, _, raw = await read_raw(stack.http, path(ref), stack.consumer.headers)
    await finisher
    assert status == 200
    assert ": keepalive\n\n" in raw
    check_wire(raw)
    by_js = parse_like_js(raw)
    by_py = await read_like_py(stack.http, path(ref), stack.consumer.headers)  # terminal now: full replay
    assert by_js == by_py
    assert [e["type"] for e in by_py][-3:] == ["token", "status", "done"]


async def test_a_terminal_job_replays_everything_ends_with_its_final_event_and_closes(stack: Stack) -> None:
    ref = await running_job(stack)
    await finish(stack, ref, "failed", error="GGUF error: out of memory")
    status, _, raw = await read_raw(stack.http, path(ref), stack.consumer.headers)
    assert status == 200
    events = parse_like_js(raw)
    assert events[-1] == {"type": "error", "error": "GGUF error: out of memory"}
    # The CLI prints every event's `content`: status events carry their status in `status` only.
    assert [e["status"] for e in events[:-1]] == ["queued", "running", "failed"]
    assert all("content" not in e for e in events[:-1])


async def test_a_job_cancelled_while_queued_streams_its_error_and_closes(stack: Stack) -> None:
    from coordinator.jobs import service

    job = await service.submit_job(stack.runtime, stack.consumer.user, "llm-chat", {"prompt": "Hi"})
    await service.cancel_job(stack.runtime, stack.consumer.user, str(job.id))
    events = await read_like_py(stack.http, f"/api/v1/jobs/{job.id}/stream", stack.consumer.headers)
    assert events[-1]["type"] == "error"
    assert [e["type"] for e in events].count("error") == 1


async def test_only_the_owner_can_stream(stack: Stack) -> None:
    ref = await running_job(stack)
    other = await make_consumer(stack.runtime, "other@example.com")
    response = await stack.http.get(path(ref), headers=other.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["content-type"].startswith("application/json")
    response = await stack.http.get(path(ref))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    response = await stack.http.get("/api/v1/jobs/not-a-uuid/stream", headers=stack.consumer.headers)
    assert response.status_code == 404


async def test_an_admin_can_stream_anyones_job(stack: Stack) -> None:
    ref = await running_job(stack)
    await finish(stack, ref, "failed", error="boom")
    admin = await make_consumer(stack.runtime, "admin@example.com", admin=True)
    status, _, raw = await read_raw(stack.http, path(ref), admin.headers)
    assert status == 200
    assert parse_like_js(raw)[-1] == {"type": "error", "error": "boom"}


async def test_many_concurrent_streams_each_get_every_event_once_in_order(stack: Stack) -> None:
    ref = await running_job(stack)
    tokens = [f"t{i} " for i in range(50)]

    async def one_reader() -> list[dict[str, Any]]:
        return parse_like_js((await read_raw(stack.http, path(ref), stack.consumer.headers))[2])

    readers = [asyncio.create_task(one_reader()) for _ in range(10)]
    await asyncio.sleep(0.2)
    await produce(stack, ref, tokens)
    await complete(stack, ref, len(tokens))
    results = await asyncio.gather(*readers)
    for events in results:
        assert "".join(e["content"] for e in events if e["type"] == "token") == "".join(tokens)
        assert events[-1]["type"] == "done"


async def _connected(stack: Stack, ref: JobRef) -> AsyncGenerator[list[Event], None]:
    """One connection's stream of an unfinished job (as the route opens it), past its replay."""
    batches = job_event_batches(stack.runtime, ref.job_id, maybe_terminal=False)
    assert [e.payload["type"] for e in await anext(batches)] == ["status", "status"]
    return batches


async def test_a_stream_this_replica_makes_is_not_read_again_after_connecting(database_url: str) -> None:
    """Subscribed while this replica makes the job's events, the connection has each one (replayed, or
    queued since): it reads nothing from the store or the job row until its keep-alive tick."""
    async with stream_stack(database_url, sse_keepalive_seconds=5.0) as quiet:
        ref = await running_job(quiet)
        assert quiet.accumulator.produces(ref.job_id)
        await quiet.accumulator.flush()  # the flush's INSERT is not the stream's
        batches = await _connected(quiet, ref)
        with statements_of(quiet.runtime) as seen:
            nxt = asyncio.ensure_future(anext(batches))
            await asyncio.sleep(0.5)
            assert not nxt.done()  # nothing to send: no event, and the keep-alive tick is later
        nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nxt
        await batches.aclose()
        assert [s for s in seen if "FROM job_events" in s or "FROM jobs" in s] == []


async def test_a_stream_made_elsewhere_is_caught_up_from_the_store_shortly_after_connecting(
    database_url: str,
) -> None:
    """An event another replica stored after this connection's replay, published where it could not hear
    it, reaches the client through the catch-up read a moment after connecting (not at the keep-alive)."""
    async with stream_stack(database_url, sse_keepalive_seconds=5.0) as quiet:
        ref = await running_job(quiet)
        await quiet.accumulator.flush()  # stored, nothing buffered: the stream may be forgotten
        assert quiet.accumulator.sweep_idle(idle_seconds=-1) == 1  # its events are made elsewhere now
        assert not quiet.accumulator.produces(ref.job_id)
        other = OutputAccumulator(quiet.runtime, PubSub())  # another replica's: a hub of its own, no bridge
        batches = await _connected(quiet, ref)
        nxt = asyncio.ensure_future(anext(batches))
        await other.on_output(dataclasses.replace(ref, new_stream=False), 1, "Hi", False)
        await other.flush()
        batch = await asyncio.wait_for(nxt, 2.0)  # the keep-alive is 5 s away
        assert [(e.payload["type"], e.payload.get("content")) for e in batch] == [("token", "Hi")]
        await batches.aclose()
