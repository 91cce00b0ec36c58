"""Job messages from Islands, already parsed: check the sender is the assigned Island, then apply them.

Identity comes from the subject only. A message about a job assigned elsewhere is dropped and costs the
sender karma (impersonation); one from an Island the job was taken away from is dropped as stale; a
duplicate or late status changes nothing. Every accepted message extends the job's lease.

Both Island transports — NATS (`nats/job_handler.py`, `nats/status_consumer.py`) and the `island:<id>`
channel — call `apply_job_message` / `apply_status_message` with the sender they authenticated."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import structlog

from coordinator.jobs import lifecycle, moves, output_check, rules, service, wiring
from coordinator.jobs import repository as sql
from coordinator.jobs.events import JobRef
from coordinator.jobs.hooks import TransitionResult
from coordinator.protocol import messages
from coordinator.protocol.codec import ProtocolError
from coordinator.protocol.messages import JobImage
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

# Re-read an accepted job's assignment at most this often (output streams are hot).
CACHE_SECONDS = 5.0
# Extend a lease on ordinary traffic at most this often per job.
EXTEND_EVERY_SECONDS = 10.0


@dataclass
class _Known:
    ref: JobRef
    state: str
    checked: float
    extended: float = 0.0


class JobIntake:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._known: dict[uuid.UUID, _Known] = {}
        self._penalized: set[tuple[uuid.UUID, str]] = set()
        runtime.hooks.register(self._observe)

    async def _observe(self, result: TransitionResult) -> None:
        """Keep the assignment cache true: a job assigned here is known without a read; one that left its
        Island (requeued) or ended is forgotten (a late message reads it again)."""
        if result.move == moves.ASSIGN.name and result.host_id is not None:
            ref = await wiring.job_ref(self.runtime, result)
            now = time.monotonic()  # the assignment set a whole lease: no extension due yet
            self._known[result.job_id] = _Known(ref, result.to_state, now, extended=now)
        elif result.to_state == rules.QUEUED or rules.is_terminal(result.to_state):
            self._known.pop(result.job_id, None)
        elif (known := self._known.get(result.job_id)) is not None:
            known.state = result.to_state

    def _known_running(self, job_id: uuid.UUID) -> bool:
        """Whether this replica saw the job start (then an implicit start would be a no-op statement)."""
        known = self._known.get(job_id)
        return known is not None and known.state == rules.RUNNING

    # ------------------------------------------------------------ sender check

    async def authorize(self, host_id: uuid.UUID, job_id: str, subject_class: str) -> JobRef | None:
        """The job, if `host_id` is the Island it is (or was last, for a finished job) assigned to."""
        parsed = service.parse_job_id(job_id)
        now = time.monotonic()
        known = self._known.get(parsed) if parsed else None
        if known is not None and known.ref.host_id == host_id and now - known.checked < CACHE_SECONDS:
            return known.ref
        row = None
        if parsed is not None:
            async with self.runtime.db.raw_statement() as session:
                row = (await session.execute(sql.JOB_FOR_MESSAGE_SQL, {"id": parsed})).first()
        if row is not None and row.host_id == host_id:
            ref = JobRef(
                row.id,
                row.user_id,
                row.workload_id,
                row.kind,
                row.runtime,
                row.host_id,
                row.created_at,
                row.stream_owner,
                row.prompt_chars,
            )
            self._known[row.id] = _Known(ref, row.state, now)
            return ref
        if row is not None and str(host_id) in (row.excluded_host_ids or ()):
            metrics.nats_rejected.labels(subject_class=subject_class, reason="stale").inc()
            return None
        await self._impersonation(host_id, job_id, row.id if row is not None else None, subject_class)
        return None

    async def _impersonation(
        self, host_id: uuid.UUID, job_id: str, existing: uuid.UUID | None, subject_class: str
    ) -> None:
        reason = "not_assigned" if existing is not None else "unknown_job"
        metrics.nats_rejected.labels(subject_class=subject_class, reason=reason).inc()
        log.warning("jobs.message_rejected", host_id=str(host_id), job_id=job_id, reason=reason)
        if (host_id, job_id) in self._penalized:
            return
        self._penalized.add((host_id, job_id))
        async with self.runtime.db.transaction() as session:
            await lifecycle.penalize_in(session, host_id, "impersonation", existing)
        await lifecycle.after_commit(self.runtime, session, [])

    async def _touch(self, ref: JobRef, seconds: int | None = None) -> None:
        """Extend the lease: always for an explicit renewal, at most every few seconds otherwise."""
        known = self._known.get(ref.job_id)
        now = time.monotonic()
        if known is None or ref.host_id is None:
            return
        if rules.is_terminal(known.state):
            return
        if seconds is None and now - known.extended < EXTEND_EVERY_SECONDS:
            return
        known.extended = now
        async with self.runtime.db.raw_statement() as session:
            await session.execute(
                sql.EXTEND_LEASE_SQL,
                {
                    "id": ref.job_id,
                    "host_id": ref.host_id,
                    "extend": seconds or self.runtime.settings.job_lease_seconds,
                },
            )

    # ------------------------------------------------------------ messages

    async def output(self, host_id: uuid.UUID, job_id: str, seq: int, chunk: str, is_final: bool) -> None:
        ref = await self.authorize(host_id, job_id, "output")
        if ref is not None:
            await self._touch(ref)
            await self.runtime.output.on_output(ref, seq, chunk, is_final)

    async def progress(self, host_id: uuid.UUID, job_id: str, step: int, total: int) -> None:
        ref = await self.authorize(host_id, job_id, "progress")
        if ref is not None:
            await self._touch(ref)
            await self.runtime.output.on_progress(ref, step, total)

    async def image(self, host_id: uuid.UUID, job_id: str, image: JobImage) -> None:
        ref = await self.authorize(host_id, job_id, "image")
        if ref is not None:
            await self._touch(ref)
            await self.runtime.output.on_image(
                ref, image.image_data, image.format, image.width, image.height, image.seed
            )

    async def lease(self, host_id: uuid.UUID, job_id: str, extend_seconds: int) -> None:
        ref = await self.authorize(host_id, job_id, "lease")
        if ref is not None:
            await self._touch(ref, max(1, min(extend_seconds, 600)))

    async def status(self, host_id: uuid.UUID, job_id: str, reported: str, error: str | None) -> bool:
        """Apply a JobStatus. False when the state is not one the Island protocol defines (malformed)."""
        target = rules.island_state(reported)
        if target is None:
            return False
        if target == rules.RUNNING:
            await self.starts([(host_id, job_id)])
            return True
        ref = await self.authorize(host_id, job_id, "status")
        if ref is None:
            return True
        if target in (rules.SUCCEEDED, rules.FAILED) and not self._known_running(ref.job_id):
            # `started` is normally first on the same stream; if it was overtaken, start implicitly.
            await self._start(ref, host_id)
        if target == rules.SUCCEEDED:
            # The stream owner's result, once complete (status can overtake the last chunks), is stored
            # by the success itself: a poller never sees `completed` without its output.
            result, gap = await output_check.final_result(self.runtime, ref)
            if gap is not None:
                target, error = rules.FAILED, gap
        else:
            result = await self.runtime.output.result(ref, 0)  # what it streamed before it failed
        inputs = lifecycle.Inputs(host_id=host_id, error=error, output=result.output, usage=result.usage)
        await lifecycle.transition(self.runtime, moves.finish_move(target), ref.job_id, inputs)
        return True

    async def starts(self, reports: list[tuple[uuid.UUID, str]]) -> None:
        """`started` (or `streaming`) reports, each (sender, job id), with every start in one statement
        (`lifecycle.start_many`): a start extends the lease; a refused one (a duplicate) touches it."""
        checked = [
            (ref, host_id)
            for host_id, job_id in reports
            if (ref := await self.authorize(host_id, job_id, "status")) is not None
        ]
        extend = self.runtime.settings.job_lease_seconds
        moved = await lifecycle.start_many(self.runtime, [(r.job_id, h) for r, h in checked], extend)
        started = {result.job_id for result in moved}
        now = time.monotonic()
        for ref, _ in checked:
            if ref.job_id not in started:
                await self._touch(ref)
            elif (known := self._known.get(ref.job_id)) is not None:
                known.extended = now  # the start extended the lease

    async def _start(self, ref: JobRef, host_id: uuid.UUID) -> None:
        """The implicit start of an end whose `started` was overtaken: the statement of the reported ones
        (`lifecycle.start_many`), which extends the lease."""
        extend = self.runtime.settings.job_lease_seconds
        await lifecycle.start_many(self.runtime, [(ref.job_id, host_id)], extend)


# ------------------------------------------------------------ the transport-agnostic entry points

JOB_MESSAGE_KINDS = ("output", "progress", "image", "lease")


async def apply_job_message(runtime: Runtime, host_id: uuid.UUID, kind: str, payload: bytes) -> None:
    """One output/progress/image/lease report from the Island `host_id` (the transport vouches for the
    sender: the NATS subject, or the channel's device token). Raises ProtocolError when malformed."""
    intake = runtime.job_intake
    if kind == "output":
        out = messages.parse_output(payload)
        with context.bind(host_id=host_id, job_id=context.clean_id(out.job_id)):
            await intake.output(host_id, out.job_id, out.seq, out.chunk, out.is_final)
    elif kind == "progress":
        progress = messages.parse_progress(payload)
        with context.bind(host_id=host_id, job_id=context.clean_id(progress.job_id)):
            await intake.progress(host_id, progress.job_id, progress.step, progress.total)
    elif kind == "image":
        image = messages.parse_image(payload)
        with context.bind(host_id=host_id, job_id=context.clean_id(image.job_id)):
            await intake.image(host_id, image.job_id, image)
    elif kind == "lease":
        lease = messages.parse_lease(payload)
        with context.bind(host_id=host_id, job_id=context.clean_id(lease.job_id)):
            await intake.lease(host_id, lease.job_id, lease.extend_seconds)
    else:
        raise ProtocolError(f"unknown job message kind {kind!r}")


async def apply_status_message(runtime: Runtime, host_id: uuid.UUID, payload: bytes) -> None:
    """One JobStatus from the Island `host_id`. Raises ProtocolError when malformed (or an unknown state);
    any other exception is transient (worth a redelivery)."""
    status = messages.parse_status(payload)
    with context.bind(host_id=host_id, job_id=context.clean_id(status.job_id)):
        if not await runtime.job_intake.status(host_id, status.job_id, status.state, status.error):
            raise ProtocolError(f"unknown state {status.state!r}")
