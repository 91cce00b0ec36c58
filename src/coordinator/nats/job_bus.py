"""The Island bus over NATS (the protocol publisher), plus the cross-replica dispatcher wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from nats.errors import MaxPayloadError

from coordinator.jobs.events import BUS_COMPONENT, DISPATCHER_COMPONENT, UndeliverableAssignment
from coordinator.nats.publisher import Publisher
from coordinator.nats.streams import ensure_streams
from coordinator.protocol.messages import AssignJob
from coordinator.runtime import Runtime
from coordinator.supervisor import Child

log = structlog.get_logger(__name__)

# A tiny core-NATS message telling every replica's dispatcher to look at the queue.
DISPATCH_WAKE = "coordinator.dispatch.wake"


class NatsJobBus:
    """`jobs.events.JobBus` over the protocol publisher of one NATS connection."""

    def __init__(self, nc: Any, base_url: str) -> None:
        self.nc = nc
        self.publisher = Publisher(nc, base_url)

    async def publish_assignment(self, host_id: uuid.UUID, job: AssignJob, msg_id: str) -> None:
        try:
            await self.publisher.publish_assignment(str(host_id), job, msg_id)
        except MaxPayloadError as exc:
            raise UndeliverableAssignment(
                f"the AssignJob is larger than the NATS server's max_payload ({self.nc.max_payload} bytes)"
            ) from exc

    async def publish_cancel(self, host_id: uuid.UUID, job_id: uuid.UUID) -> None:
        await self.publisher.publish_cancel(str(host_id), str(job_id))

    async def purge_host_jobs(self, host_id: uuid.UUID) -> None:
        await self.publisher.purge_host_jobs(str(host_id))

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
        await ensure_streams(nc.jetstream())

        async def wake(_: Any) -> None:
            dispatcher = self.runtime.components.get(DISPATCHER_COMPONENT)
            if dispatcher is not None:
                dispatcher.wake()

        sub = await nc.subscribe(DISPATCH_WAKE, cb=wake)
        self.runtime.components[BUS_COMPONENT] = NatsJobBus(nc, self.runtime.base_url)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.runtime.components.pop(BUS_COMPONENT, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
