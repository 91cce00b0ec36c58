"""The Island bus over NATS: AssignJob on JetStream, CancelJob, purges, and the cross-replica wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from coordinator.jobs.events import BUS_COMPONENT, DISPATCHER_COMPONENT
from coordinator.protocol import subjects
from coordinator.runtime import Runtime
from coordinator.supervisor import Child

log = structlog.get_logger(__name__)

# A tiny core-NATS message telling every replica's dispatcher to look at the queue.
DISPATCH_WAKE = "coordinator.dispatch.wake"

JOBS_STREAM_CONFIG = StreamConfig(
    name=subjects.JOBS_STREAM,
    subjects=[subjects.JOBS_SUBJECTS],
    retention=RetentionPolicy.WORK_QUEUE,
    storage=StorageType.FILE,
    duplicate_window=120.0,
    max_age=7 * 24 * 3600.0,
)
STATUS_STREAM_CONFIG = StreamConfig(
    name=subjects.STATUS_STREAM,
    subjects=[subjects.STATUS_SUBJECTS],
    retention=RetentionPolicy.WORK_QUEUE,
    storage=StorageType.FILE,
    max_age=24 * 3600.0,
)


async def ensure_stream(js: Any, config: StreamConfig) -> None:
    """Create a stream unless it exists (whoever created it first, its configuration stands)."""
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        with contextlib.suppress(Exception):
            await js.add_stream(config)
        await js.stream_info(config.name)


async def ensure_job_streams(js: Any) -> None:
    await ensure_stream(js, JOBS_STREAM_CONFIG)
    await ensure_stream(js, STATUS_STREAM_CONFIG)


class NatsJobBus:
    """`jobs.events.JobBus` over one NATS connection."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def publish_assignment(self, host_id: uuid.UUID, payload: bytes, msg_id: str) -> None:
        await self.js.publish(
            subjects.host_subject(str(host_id), "jobs"),
            payload,
            stream=subjects.JOBS_STREAM,
            headers={"Nats-Msg-Id": msg_id},
            timeout=5,
        )

    async def publish_cancel(self, host_id: uuid.UUID, job_id: uuid.UUID) -> None:
        await self.nc.publish(
            subjects.host_subject(str(host_id), "cancel"), b'{"job_id":"%s"}' % str(job_id).encode()
        )

    async def purge_host_jobs(self, host_id: uuid.UUID) -> None:
        await self.js.purge_stream(subjects.JOBS_STREAM, subject=subjects.host_subject(str(host_id), "jobs"))

    async def wake_dispatchers(self) -> None:
        await self.nc.publish(DISPATCH_WAKE, b"")


class JobBusChild(Child):
    """Creates the job streams, registers the bus, and relays wake-ups to this replica's dispatcher."""

    name = "job_bus"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        await ensure_job_streams(nc.jetstream())

        async def wake(_: Any) -> None:
            dispatcher = self.runtime.components.get(DISPATCHER_COMPONENT)
            if dispatcher is not None:
                dispatcher.wake()

        sub = await nc.subscribe(DISPATCH_WAKE, cb=wake)
        self.runtime.components[BUS_COMPONENT] = NatsJobBus(nc)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.runtime.components.pop(BUS_COMPONENT, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
