"""Server-Sent Events of a job (client-api §7): replay every stored event, then live, then close.

Wire format, byte for byte: each event is `data: <compact json>\\n\\n` in one write; a keep-alive is the
comment `: keepalive\\n\\n`; no `event:`/`id:`/`retry:` lines and never `data: [DONE]` on this stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.responses import StreamingResponse

from coordinator.jobs import rules
from coordinator.jobs.models import Job
from coordinator.jobs.output import accumulator_of, stored_events
from coordinator.jobs.views import usage_of
from coordinator.pubsub import Event, SubscriberOverflow, dumps, job_topic
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
# How long to wait for a store flush (another replica's) that fills a gap in the live positions.
GAP_WAIT_SECONDS = 3.0
# A job terminal this long without a stored final event lost it (its replica died): synthesize one.
LOST_FINAL_AFTER_SECONDS = 4.0


def frame(encoded: str) -> bytes:
    return b"data: " + encoded.encode() + b"\n\n"


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


async def replay(runtime: Runtime, job_id: uuid.UUID, after: int) -> list[Event]:
    """Events after a position: this process's buffered ones and the stored ones, in order."""
    accumulator = accumulator_of(runtime)
    if accumulator is not None:
        return await accumulator.replay(job_id, after)
    return await stored_events(runtime, job_id, after)


async def _fill_gap(runtime: Runtime, job_id: uuid.UUID, after: int, upto: int) -> list[Event]:
    """The events strictly between two positions, waiting a little for a remote flush to store them."""
    deadline = time.monotonic() + GAP_WAIT_SECONDS
    while True:
        events = [e for e in await replay(runtime, job_id, after) if e.position < upto]
        if [e.position for e in events] == list(range(after + 1, upto)) or time.monotonic() > deadline:
            if len(events) != upto - after - 1:
                log.warning("sse.gap_unfilled", job_id=str(job_id), after=after, upto=upto)
            return events
        await asyncio.sleep(0.05)


def final_from_row(job: Job, position: int) -> Event:
    """The last event of a finished job whose own final event never reached the store."""
    if job.state == rules.SUCCEEDED:
        payload: dict[str, Any] = {"type": "done", "usage": usage_of(job)}
    else:
        payload = {"type": "error", "error": job.error or f"Job {rules.public_status(job.state)}"}
    return Event.make(job_topic(job.id), position, payload)


async def _lost_final(runtime: Runtime, job_id: uuid.UUID, position: int) -> Event | None:
    """A synthesized final event when the job has been terminal longer than finalisation takes."""
    async with runtime.db.session() as session:
        job = await session.get(Job, job_id)
    if job is None or not rules.is_terminal(job.state) or job.completed_at is None:
        return None
    waited = (datetime.now(UTC) - job.completed_at).total_seconds()
    if waited < LOST_FINAL_AFTER_SECONDS:
        return None
    return final_from_row(job, position)


class _Cursor:
    """What one connection has delivered: the last position, and whether the final event went out."""

    def __init__(self, runtime: Runtime, job_id: uuid.UUID, after: int = 0) -> None:
        self.runtime, self.job_id = runtime, job_id
        self.last = after
        self.finished = False

    def _take(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if self.finished or event.position <= self.last:
                continue  # already delivered (replayed, or a duplicate)
            self.last = event.position
            out.append(event)
            self.finished = event.is_final
        return out

    async def replayed(self) -> list[Event]:
        return self._take(await replay(self.runtime, self.job_id, self.last))

    async def live(self, event: Event) -> list[Event]:
        if event.position > self.last + 1:  # a gap: fill it from the store first
            missing = await _fill_gap(self.runtime, self.job_id, self.last, event.position)
            return self._take([*missing, event])
        return self._take([event])


async def job_event_batches(
    runtime: Runtime, job_id: uuid.UUID, *, maybe_terminal: bool = True, after: int = 0
) -> AsyncIterator[list[Event]]:
    """Every event of the job once, in order (replay, then live), in batches of what is ready now; an
    empty batch marks a keep-alive tick. Ends after `done`/`error`. `after` skips the positions a client
    already has (a channel re-join with `after_seq`); the SSE stream and the job channel both read this.

    Subscribe first, then replay, then skip live positions already replayed; a live position that jumps
    ahead is filled from the store. Events another replica published before this subscription existed
    but stored only after the replay are caught up shortly after connecting and on every quiet tick;
    when this replica makes the job's events there is nothing to catch up, and the first quiet tick is
    the keep-alive (a crowd connecting to a live job re-reads nothing as its tokens start)."""
    hub = runtime.pubsub
    accumulator = accumulator_of(runtime)
    keepalive = runtime.settings.sse_keepalive_seconds
    catch_up = min(keepalive, max(0.05, runtime.settings.output_flush_interval_seconds * 5))
    cursor = _Cursor(runtime, job_id, after)
    check_row = maybe_terminal  # a job seen unfinished at connect needs no row check until it goes quiet
    while True:
        sub = hub.subscribe(job_topic(job_id))
        try:
            local = accumulator is not None and accumulator.produces(job_id)
            wait = keepalive if local else catch_up
            while True:
                if batch := await cursor.replayed():
                    yield batch
                if cursor.finished:
                    return
                if check_row and (lost := await _lost_final(runtime, job_id, cursor.last + 1)) is not None:
                    yield [lost]
                    return
                check_row = True
                event = await sub.get(wait)
                quiet_for = wait if event is None else keepalive
                batch = []
                while event is not None:
                    batch.extend(await cursor.live(event))
                    if cursor.finished:
                        yield batch
                        return
                    if sub.queue.empty() and batch:  # about to wait: send what is ready in one write
                        yield batch
                        batch = []
                    event = await sub.get(keepalive)
                if quiet_for >= keepalive:
                    yield []
                wait = keepalive
        except SubscriberOverflow:
            log.info("sse.resubscribe_after_overflow", job_id=str(job_id), after=cursor.last)
        finally:
            sub.close()


async def job_events(
    runtime: Runtime, job_id: uuid.UUID, *, maybe_terminal: bool = True
) -> AsyncIterator[Event | None]:
    """The same stream one event at a time; None marks a keep-alive tick."""
    async for batch in job_event_batches(runtime, job_id, maybe_terminal=maybe_terminal):
        if not batch:
            yield None
        for event in batch:
            yield event


async def job_stream_body(
    runtime: Runtime, job_id: uuid.UUID, *, maybe_terminal: bool = True
) -> AsyncIterator[bytes]:
    """The SSE body of `GET /jobs/{id}/stream`: whole `data:` frames (every event ready is sent in one
    write, never split), comments as keep-alives."""
    metrics.open_streams.labels(kind="sse").inc()
    try:
        async for batch in job_event_batches(runtime, job_id, maybe_terminal=maybe_terminal):
            yield b"".join(frame(e.encoded) for e in batch) if batch else KEEPALIVE
    finally:
        metrics.open_streams.labels(kind="sse").dec()


def data_frame(value: Any) -> bytes:
    """A `data:` frame of any JSON value (chat completion chunks)."""
    return frame(dumps(value))
