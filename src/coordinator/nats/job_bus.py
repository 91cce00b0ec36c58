"""The Island bus over NATS (the protocol publisher), plus the cross-replica dispatcher wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog
from nats.errors import MaxPayloadError

from coordinator.jobs.events import UndeliverableAssignment
from coordinator.nats.island_push import ASSIGN_JOB, CANCEL_JOB, publish_push
from coordinator.nats.publisher import Publisher, absolute_url
from coordinator.nats.streams import ensure_streams
from coordinator.protocol.messages import AssignJob, CancelJob
from coordinator.runtime import Runtime
from coordinator.supervisor import Child

log = structlog.get_logger(__name__)

# A tiny core-NATS message telling every replica's dispatcher to look at the queue.
DISPATCH_WAKE = "coordinator.dispatch.wake"


def nats_transport(_: uuid.UUID) -> str:
    return "nats"


class NatsJobBus:
    """`jobs.events.JobBus` over the protocol publisher of one NATS connection. Islands on the channel
    transport (`transport_of(host_id) == "websocket"`) get their messages pushed down their socket,
    through the replica holding it (`nats/island_push.py`), instead of JetStream."""

    def __init__(
        self,
        nc: Any,
        base_url: str,
        transport_of: Callable[[uuid.UUID], str] = nats_transport,
        replica_id: str = "",
        others_there: Callable[[], bool] = lambda: True,
    ) -> None:
        self.nc = nc
        self.publisher = Publisher(nc, base_url)
        self.transport_of = transport_of
        self.replica_id = replica_id.encode()
        self.others_there = others_there

    async def publish_assignment(self, host_id: uuid.UUID, job: AssignJob, msg_id: str) -> None:
        try:
            if self.transport_of(host_id) == "websocket":
                if job.wasm_url is not None:
                    job = replace(job, wasm_url=absolute_url(job.wasm_url, self.publisher.base_url))
                await publish_push(self.nc, host_id, ASSIGN_JOB, job.to_dict())
            else:
                await self.publisher.publish_assignment(str(host_id), job, msg_id)
        except MaxPayloadError as exc:
            raise UndeliverableAssignment(
                f"the AssignJob is larger than the NATS server's max_payload ({self.nc.max_payload} bytes)"
            ) from exc

    async def publish_cancel(self, host_id: uuid.UUID, job_id: uuid.UUID) -> None:
        if self.transport_of(host_id) == "websocket":
            await publish_push(self.nc, host_id, CANCEL_JOB, CancelJob(str(job_id)).to_dict())
            return
        await self.publisher.publish_cancel(str(host_id), str(job_id))

    async def purge_host_jobs(self, host_id: uuid.UUID) -> None:
        await self.publisher.purge_host_jobs(str(host_id))

    async def wake_dispatchers(self) -> None:
        """Wake the other replicas' dispatchers (the sender woke its own: it ignores its own message), if
        there are any (`others_there`: the pub/sub's peers; every process with a dispatcher bridges)."""
        if self.others_there():
            await self.nc.publish(DISPATCH_WAKE, self.replica_id)


class JobBusChild(Child):
    """Creates the job streams, registers the bus, and relays wake-ups to this replica's dispatcher."""

    name = "job_bus"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def transport_of(self, host_id: uuid.UUID) -> str:
        """How an Island is reached, from the fleet view (hydrated from `hosts.transport`)."""
        view = self.runtime.fleet.get(host_id)
        return view.transport if view is not None else "nats"

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        await ensure_streams(nc.jetstream(), self.runtime.settings.nats_stream_replicas)

        me = self.runtime.pubsub.replica_id

        async def wake(msg: Any) -> None:
            if self.runtime.dispatcher is not None and (not msg.data or msg.data.decode() != me):
                self.runtime.dispatcher.wake()

        sub = await nc.subscribe(DISPATCH_WAKE, cb=wake)
        pubsub = self.runtime.pubsub
        self.runtime.bus = NatsJobBus(nc, self.runtime.base_url, self.transport_of, me, pubsub.listened)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.runtime.bus = None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
