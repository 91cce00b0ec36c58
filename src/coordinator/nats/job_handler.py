"""Core-NATS job messages from Islands: `host.*.output|progress|image|lease` → jobs intake.

Malformed payloads are logged with their subject, counted in `nats_malformed` and dropped."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from coordinator.jobs.intake import JobIntake
from coordinator.protocol import messages, subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

INTAKE_COMPONENT = "job_intake"


def sender(subject: str) -> uuid.UUID:
    """The Island a message comes from: the subject's second token, which must be a UUID we know."""
    host = subjects.host_id_from_subject(subject)
    if host is None or not subjects.valid_host_id(host):
        raise ProtocolError("bad host id in subject")
    try:
        return uuid.UUID(host)
    except ValueError:
        raise ProtocolError("host id is not a UUID") from None


def intake_of(runtime: Runtime) -> JobIntake:
    intake = runtime.components.get(INTAKE_COMPONENT)
    if intake is None:
        intake = runtime.components[INTAKE_COMPONENT] = JobIntake(runtime)
    assert isinstance(intake, JobIntake)
    return intake


async def handle_core_message(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Parse and apply one output/progress/image/lease message; never raises on bad input."""
    kind = subject.rsplit(".", 1)[-1]
    metrics.nats_messages.labels(subject_class=kind).inc()
    intake = intake_of(runtime)
    try:
        host_id = sender(subject)
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
    except ProtocolError as exc:
        metrics.nats_malformed.labels(subject_class=kind).inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))
    except Exception:
        log.exception("nats.job_message_failed", subject=subject)


class JobHandlerChild(Child):
    """Subscribes to the Island job-message subjects (never `host.>`)."""

    name = "job_handler"
    SUFFIXES = ("output", "progress", "image", "lease")
    QUEUE = "coordinator-job-messages"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        intake_of(self.runtime)

        def callback() -> Callable[[Any], Awaitable[None]]:
            async def on_message(msg: Any) -> None:
                with context.bind_from_nats(msg):
                    await handle_core_message(self.runtime, msg.subject, msg.data)

            return on_message

        # One replica of the queue group takes each message; the stream router forwards it to the job's owner.
        subs = [
            await nc.subscribe(f"host.*.{suffix}", queue=self.QUEUE, cb=callback())
            for suffix in self.SUFFIXES
        ]
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
