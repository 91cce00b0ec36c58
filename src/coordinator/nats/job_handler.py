"""Core-NATS job messages from Islands: `host.*.progress|image|lease` → jobs intake (the same
`apply_job_message` the `island:<id>` channel calls; here the sender is the subject's second token).

Malformed payloads are logged with their subject, counted in `nats_malformed` and dropped."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from coordinator.jobs.intake import apply_job_message
from coordinator.protocol import subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import context, metrics

__all__ = ["handle_core_message", "sender"]

log = structlog.get_logger(__name__)


def sender(subject: str) -> uuid.UUID:
    """The Island a message comes from: the subject's second token, which must be a UUID we know."""
    host = subjects.host_id_from_subject(subject)
    if host is None or not subjects.valid_host_id(host):
        raise ProtocolError("bad host id in subject")
    try:
        return uuid.UUID(host)
    except ValueError:
        raise ProtocolError("host id is not a UUID") from None


async def handle_core_message(runtime: Runtime, subject: str, payload: bytes) -> None:
    """Parse and apply one output/progress/image/lease message; never raises on bad input."""
    kind = subject.rsplit(".", 1)[-1]
    metrics.nats_messages.labels(subject_class=kind).inc()
    try:
        await apply_job_message(runtime, sender(subject), kind, payload)
    except ProtocolError as exc:
        metrics.nats_malformed.labels(subject_class=kind).inc()
        log.warning("nats.malformed", subject=subject, error=str(exc))
    except Exception:
        log.exception("nats.job_message_failed", subject=subject)


class JobHandlerChild(Child):
    """Subscribes to the Island job-message subjects (never `host.>`); `host.*.output` is consumed
    durably from `JOB_OUTPUT` instead (nats/output_consumer.py)."""

    name = "job_handler"
    SUFFIXES = ("progress", "image", "lease")
    QUEUE = "coordinator-job-messages"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")

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
