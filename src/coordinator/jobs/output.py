"""The output accumulator: orders each job's Island output, persists it in batches, assembles the
job's result, and broadcasts every consumer event on topic `job:{id}` (DESIGN §6 step 4).

Positions are per job, 1, 2, 3…, continuing the stored ones after a restart. Events are kept in memory
until their batch has committed, so a replay (memory first, then the table) never misses one.

The accumulator never writes the jobs row: the terminal move stores the `result` it assembled (output and
counted usage) in the move's own transaction (`jobs/intake.py` asks for it before a success, waiting for
the last chunks when the status overtook them). Once the move committed, `on_terminal` releases what is
still held and ends the stream: the final `status` event, then `done` (succeeded) or `error`, always last.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import text

from coordinator.jobs import repository as sql
from coordinator.jobs import rules
from coordinator.jobs.events import JobRef, OutputResult
from coordinator.jobs.output_assembly import JobAssembly, counted_usage, done_usage
from coordinator.loops import LoopService
from coordinator.pubsub import Event, PubSub, job_topic
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

# The last stored position of a job (positions continue after a restart of this process).
MAX_POSITION_SQL = text("SELECT COALESCE(max(position), 0) FROM job_events WHERE job_id = :job_id")

# One flush: every buffered event of every job in one multi-row INSERT (a replay is idempotent).
INSERT_EVENTS_SQL = text(
    """
    INSERT INTO job_events (job_id, position, event)
    SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:positions AS bigint[]), CAST(:events AS jsonb[]))
    ON CONFLICT DO NOTHING
    """
)

# The texts a chat job's prompt tokens are estimated from (when the Island reports no counts).
PROMPT_SQL = text(f"SELECT {sql.prompt_chars_sql('jobs')} FROM jobs WHERE id = :id")

# The seed a consumer gave in an image job's input (a JSON integer, else NULL).
INPUT_SEED_SQL = text(
    "SELECT CASE WHEN jsonb_typeof(input -> 'seed') = 'number' THEN input -> 'seed' END "
    "FROM jobs WHERE id = :id"
)

# Stored events of a job after a position, in order (the replay of a stream).
EVENTS_AFTER_SQL = text(
    "SELECT position, event FROM job_events WHERE job_id = :job_id AND position > :after ORDER BY position"
)


def status_event(public_status: str) -> dict[str, Any]:
    """A `status` event: the status in `status`, never in `content` (the CLI prints every event's
    `content`, so a status there would be printed between the tokens)."""
    return {"type": "status", "status": public_status}


def status_of_event(payload: dict[str, Any]) -> Any:
    """The status of a stored `status` event (events stored before 0.x carried it in `content`)."""
    return payload.get("status", payload.get("content"))


# Keep a finished job's stream this long, so late duplicates are recognised and ignored.
FORGET_AFTER_SECONDS = 60.0
# Drop a stream that never finished here after this long without any event (its job ended elsewhere).
IDLE_STREAM_SECONDS = 3600.0


@dataclass
class _Stream:
    ref: JobRef
    assembly: JobAssembly
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    next_position: int = 1
    unflushed: list[Event] = field(default_factory=list)
    finalized: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    first_token_at: float | None = None
    # Set once the current attempt's output is complete (final chunk with nothing missing, or image).
    completed: asyncio.Event = field(default_factory=asyncio.Event)
    touched: float = field(default_factory=time.monotonic)
    # Islands the job was requeued away from (each is excluded from it for good): their stragglers, sent
    # or redelivered after the requeue, belong to a dead attempt and never join the next one's output.
    retired_hosts: set[uuid.UUID] = field(default_factory=set)
    # No stored event of the job is after this position (this process stores them: known once the stream
    # is made here, raised by each flush in the step that takes the flushed events out of `unflushed`);
    # None until known (`replay` then reads the store).
    stored_upto: int | None = None

    def from_retired(self, job: JobRef) -> bool:
        return job.host_id is not None and job.host_id in self.retired_hosts


class OutputAccumulator:
    """`jobs.events.OutputSink` with ordered, batched persistence and pub/sub broadcast."""

    def __init__(self, runtime: Runtime, pubsub: PubSub | None = None) -> None:
        self.runtime = runtime
        self.pubsub = pubsub or runtime.pubsub
        self._streams: dict[uuid.UUID, _Stream] = {}
        self._flush_lock = asyncio.Lock()
        self._when_stored: list[Callable[[], Awaitable[None]]] = []
        self.wake: Callable[[], None] | None = None

    # ------------------------------------------------------------ sink interface

    async def on_output(self, job: JobRef, seq: int, chunk: str, is_final: bool) -> None:
        stream = await self._stream(job)
        async with stream.lock:
            if stream.finalized or stream.from_retired(job):
                return
            events = stream.assembly.chunk(seq, chunk, is_final)
            if events and stream.first_token_at is None:
                stream.first_token_at = time.monotonic()
                waited = max(0.0, time.time() - job.created_at.timestamp())
                metrics.time_to_first_token.observe(waited)
            for payload in events:
                await self._emit(stream, payload)
            self._mark_complete(stream)

    async def on_progress(self, job: JobRef, step: int, total: int) -> None:
        stream = await self._stream(job)
        async with stream.lock:
            # Diffusers' step messages straggle: after the final event they are dropped, never emitted.
            if not stream.finalized and not stream.from_retired(job):
                await self._emit(stream, {"type": "progress", "step": step, "total": total})

    async def on_image(
        self, job: JobRef, image_data: str, format: str, width: int, height: int, seed: int | None
    ) -> None:
        stream = await self._stream(job)
        if seed is None:  # the Island did not say: the seed the consumer asked for, if any
            seed = await self._input_seed(job.job_id)
        async with stream.lock:
            if stream.finalized or stream.from_retired(job):
                return
            payload = stream.assembly.set_image(image_data, format, width, height, seed)
            if payload is not None:
                await self._emit(stream, payload)
            self._mark_complete(stream)

    async def on_status(self, job: JobRef, public_status: str) -> None:
        stream = await self._stream(job)
        async with stream.lock:
            if stream.finalized:
                return
            if public_status == rules.public_status(rules.QUEUED):
                # Requeued after a lost lease: the next attempt streams its output from the start.
                stream.retired_hosts.update(h for h in (stream.ref.host_id, job.host_id) if h is not None)
                stream.assembly = JobAssembly(job.runtime, job.workload_kind)
                stream.completed = asyncio.Event()
            await self._emit(stream, status_event(public_status))

    async def on_terminal(
        self, job: JobRef, state: str, error: str | None, usage: dict[str, Any] | None, credits: float
    ) -> None:
        stream = await self._stream(job)
        async with stream.lock:
            if stream.finalized:
                return
            stream.finalized = True
            for payload in stream.assembly.release_held():
                await self._emit(stream, payload)
            await self._emit(stream, status_event(rules.public_status(state)))
            if state == rules.SUCCEEDED:
                await self._emit(stream, {"type": "done", "usage": done_usage(usage or {}, credits)})
            else:
                await self._emit(
                    stream, {"type": "error", "error": error or f"Job {rules.public_status(state)}"}
                )
        asyncio.get_running_loop().call_later(FORGET_AFTER_SECONDS, self._forget, stream)

    async def result(self, job: JobRef, wait: float) -> OutputResult:
        """The assembled output and its counted usage once its last piece arrived (or after `wait`
        seconds), for the terminal move to store in its own transaction."""
        stream = await self._stream(job)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.completed.wait(), wait)
        async with stream.lock:
            assembly = stream.assembly
            complete = stream.finalized or assembly.complete
            reported = dict(assembly.usage)
            output, chunks = assembly.output(), assembly.token_chunks
        prompt = job.prompt_chars
        if prompt is None and "completion_tokens" not in reported and chunks:
            prompt = await self._prompt_chars(job.job_id)
        return OutputResult(output, counted_usage(reported, chunks, prompt), complete)

    # ------------------------------------------------------------ replay

    def produces(self, job_id: uuid.UUID) -> bool:
        """Whether this replica is making the job's events now (its stream is here, unfinished): then a
        subscriber has each one, queued if published after it subscribed, else in `replay`."""
        stream = self._streams.get(job_id)
        return stream is not None and not stream.finalized

    def owner_of(self, job_id: uuid.UUID) -> tuple[int, bool] | None:
        """The consumer of a job whose events this replica makes, and whether its stream has ended, from
        memory; None when the job's stream is not here."""
        stream = self._streams.get(job_id)
        if stream is None or not stream.ready.is_set():
            return None
        return stream.ref.user_id, stream.finalized

    def pending(self, job_id: uuid.UUID, after: int = 0) -> list[Event]:
        """Events not yet known to be stored (read this BEFORE the table, see `replay`)."""
        stream = self._streams.get(job_id)
        if stream is None:
            return []
        return [e for e in stream.unflushed if e.position > after]

    async def replay(self, job_id: uuid.UUID, after: int = 0) -> list[Event]:
        """Every event of a job after a position, in order: in-memory ones, then the stored ones.

        Memory is read first: an event leaves memory only after its batch committed, so it is in one
        of the two reads whatever flush runs in between. A stream made here knows how far its events
        are stored: a replay from there on (a stream opened on a job just assigned) reads no table."""
        in_memory = self.pending(job_id, after)
        stream = self._streams.get(job_id)
        if stream is not None and stream.stored_upto is not None and stream.stored_upto <= after:
            return in_memory  # nothing of it is stored after `after`: no read
        events = {e.position: e for e in await stored_events(self.runtime, job_id, after)}
        for event in in_memory:
            events.setdefault(event.position, event)
        return [events[p] for p in sorted(events)]

    # ------------------------------------------------------------ internals

    async def _stream(self, job: JobRef) -> _Stream:
        stream = self._streams.get(job.job_id)
        if stream is None:
            stream = self._streams[job.job_id] = _Stream(job, JobAssembly(job.runtime, job.workload_kind))
            try:
                last = 0
                if not job.new_stream:  # else nothing can be stored yet
                    async with self.runtime.db.read() as session:
                        last = await session.scalar(MAX_POSITION_SQL, {"job_id": job.job_id})
                stream.next_position = int(last or 0) + 1
                stream.stored_upto = int(last or 0)
                if last:
                    await self._resume(stream)
            finally:
                stream.ready.set()
        else:
            await stream.ready.wait()
        if job.host_id is not None and job.host_id != stream.ref.host_id and not stream.from_retired(job):
            stream.ref = job
        stream.touched = time.monotonic()
        return stream

    async def _resume(self, stream: _Stream) -> None:
        """A stream whose job already has stored events (its owner replica is gone, or this process
        restarted): a finished job stays finished; an unfinished one continues its current attempt."""
        tokens: list[str] = []
        for event in await stored_events(self.runtime, stream.ref.job_id):
            if event.is_final:
                stream.finalized = True
                return
            kind, content = event.payload.get("type"), event.payload.get("content")
            if kind == "status" and status_of_event(event.payload) == rules.public_status(rules.QUEUED):
                tokens = []  # requeued: the output starts again with the next attempt
            elif kind == "token" and isinstance(content, str):
                tokens.append(content)
        stream.assembly = JobAssembly.resumed(stream.ref.runtime, stream.ref.workload_kind, tokens)
        log.info("output.stream_resumed", job_id=str(stream.ref.job_id), tokens=len(tokens))

    def sweep_idle(self, idle_seconds: float = IDLE_STREAM_SECONDS) -> int:
        """Forget streams with nothing buffered and no event for `idle_seconds`; returns how many."""
        cutoff = time.monotonic() - idle_seconds
        stale = [k for k, s in self._streams.items() if s.touched < cutoff and not s.unflushed]
        for job_id in stale:
            del self._streams[job_id]
        return len(stale)

    async def _emit(self, stream: _Stream, payload: dict[str, Any]) -> None:
        event = Event.make(job_topic(stream.ref.job_id), stream.next_position, payload)
        stream.next_position += 1
        stream.unflushed.append(event)
        await self.pubsub.publish(event)
        if self.wake is not None:
            self.wake()

    def _mark_complete(self, stream: _Stream) -> None:
        if stream.assembly.complete:
            stream.completed.set()

    async def _input_seed(self, job_id: uuid.UUID) -> int | None:
        async with self.runtime.db.read() as session:
            raw = await session.scalar(INPUT_SEED_SQL, {"id": job_id})
        return raw if isinstance(raw, int) and not isinstance(raw, bool) else None

    async def _prompt_chars(self, job_id: uuid.UUID) -> int | None:
        """The length of the job's system prompt and prompt, for the prompt-token estimate (None if
        unreadable). The intake's JobRef carries it; this read is for refs without it."""
        try:
            async with self.runtime.db.read() as session:
                chars = await session.scalar(PROMPT_SQL, {"id": job_id})
        except Exception:
            log.exception("output.prompt_read_failed", job_id=str(job_id))
            return None
        return None if chars is None else int(chars)

    def _forget(self, stream: _Stream) -> None:
        if not stream.unflushed and self._streams.get(stream.ref.job_id) is stream:
            del self._streams[stream.ref.job_id]
        elif stream.unflushed:
            asyncio.get_running_loop().call_later(FORGET_AFTER_SECONDS, self._forget, stream)

    def when_stored(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` once everything buffered now is stored (after the next flush that succeeds):
        the output consumer acknowledges its messages so, and a batch shares the gathered flush."""
        self._when_stored.append(callback)
        if self.wake is not None:
            self.wake()

    async def flush(self) -> int:
        """Store every buffered event in one INSERT, then run the `when_stored` callbacks; returns how many
        events. On error the events stay buffered and the callbacks wait for the next flush."""
        async with self._flush_lock:
            callbacks, self._when_stored = self._when_stored, []
            try:
                stored = await self._store()
            except BaseException:
                self._when_stored[:0] = callbacks
                raise
        for callback in callbacks:
            try:
                await callback()
            except Exception:
                log.exception("output.stored_callback_failed")
        return stored

    async def _store(self) -> int:
        batch = [(s, list(s.unflushed)) for s in self._streams.values() if s.unflushed]
        if not batch:
            return 0
        events = [e for _, evs in batch for e in evs]
        params = {
            "job_ids": [s.ref.job_id for s, evs in batch for _ in evs],
            "positions": [e.position for e in events],
            "events": [e.encoded for e in events],
        }
        async with self.runtime.db.raw_statement() as session:
            await session.execute(INSERT_EVENTS_SQL, params)
        for stream, flushed in batch:
            del stream.unflushed[: len(flushed)]
            if stream.stored_upto is not None:
                stream.stored_upto = max(stream.stored_upto, flushed[-1].position)
        return len(events)


async def stored_events(runtime: Runtime, job_id: uuid.UUID, after: int = 0) -> list[Event]:
    """The stored events of a job after a position, in order (one statement on the hot paths' pool: every
    stream opened reads them)."""
    async with runtime.db.raw_statement() as session:
        rows = (await session.execute(EVENTS_AFTER_SQL, {"job_id": job_id, "after": after})).all()
    topic = job_topic(job_id)
    return [Event.make(topic, int(r[0]), r[1]) for r in rows]


def accumulator_of(runtime: Runtime) -> OutputAccumulator | None:
    sink = getattr(runtime.output, "local", runtime.output)  # this replica's, under a stream router
    return sink if isinstance(sink, OutputAccumulator) else None


class OutputAccumulatorChild(LoopService):
    """Registers the accumulator as the runtime's output sink and flushes it shortly after new events
    (woken by the accumulator; the batch gathers for `output_flush_interval_seconds`), and sweeps idle
    streams every minute."""

    name = "output"
    interval = 60.0

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.accumulator: OutputAccumulator | None = None
        self.gather = runtime.settings.output_flush_interval_seconds
        self.after_error = min(1.0, self.gather * 10)  # retry a failed flush soon: events wait in memory
        self._last_sweep = time.monotonic()

    async def setup(self) -> None:
        if self.accumulator is None:  # a restart keeps the streams (and their buffered events)
            self.accumulator = OutputAccumulator(self.runtime)
        self.accumulator.wake = self.wake
        if getattr(self.runtime.output, "local", None) is not self.accumulator:
            self.runtime.output = self.accumulator  # (keeps a router wrapping it)

    async def run_once(self) -> None:
        assert self.accumulator is not None
        await asyncio.sleep(self.gather)  # gather a batch
        await self.accumulator.flush()
        if time.monotonic() - self._last_sweep > 60:
            self._last_sweep = time.monotonic()
            self.accumulator.sweep_idle()

    async def teardown(self) -> None:
        if self.accumulator is not None:
            with contextlib.suppress(Exception):
                await self.accumulator.flush()
