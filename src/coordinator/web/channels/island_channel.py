"""`island:<host_id>` (MobileAgentChannel): a phone or browser Island over the socket.

Joined with that Island's device token only. Pushes in are the NATS payloads of island-protocol
unchanged, handed to the same Island-intake functions the NATS handlers call (`hosts.intake`,
`jobs.intake`), with the token's Island as the sender — so placement, leases, output ordering, karma,
earnings and the forged-identity checks are the ones every Island gets. A malformed payload is refused
with `invalid` and counted; the socket stays open."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import structlog

from coordinator import account_events
from coordinator.jobs.assignment import still_assigned
from coordinator.jobs.intake import JOB_MESSAGE_KINDS, apply_job_message, apply_status_message
from coordinator.nats.island_push import ASSIGN_JOB
from coordinator.protocol.codec import ProtocolError
from coordinator.telemetry import context, metrics
from coordinator.web.channels import protocol as wire
from coordinator.web.channels.socket import Channel, JoinRefused
from coordinator.web.fleet_events import fleet_changed

log = structlog.get_logger(__name__)

EVENTS_IN = ("register", "heartbeat", "status", *JOB_MESSAGE_KINDS)


class IslandChannel(Channel):
    kind = "island"

    host_id: uuid.UUID

    async def join(self, payload: dict[str, Any]) -> dict[str, Any]:
        device = self.identity.device
        _, raw_id = wire.topic_kind(self.topic)
        if device is None or raw_id.lower() != device.host_id.lower():
            raise JoinRefused(wire.FORBIDDEN)
        self.host_id = uuid.UUID(device.host_id)
        registry = self.runtime.channels
        await registry.ensure_attached()
        registry.add_island(self)
        return {"host_id": str(self.host_id)}

    async def after_join(self) -> None:
        view = self.runtime.fleet.get(self.host_id)
        if view is not None:
            view.transport = "websocket"
        runtimes = view.supported_runtimes if view is not None else ("container", "wasm")
        for job in await still_assigned(self.runtime, self.host_id, runtimes):
            await self.push(ASSIGN_JOB, job.to_dict())
        owner = view.owner_id if view is not None else None
        await account_events.island_updated(self.runtime, owner, self.host_id, "connected")
        await fleet_changed(self.runtime)

    async def terminate(self) -> None:
        self.runtime.channels.remove_island(self)
        await super().terminate()
        view = self.runtime.fleet.get(self.host_id)
        if view is not None:
            await account_events.island_updated(self.runtime, view.owner_id, self.host_id, "disconnected")
        await fleet_changed(self.runtime)

    async def handle_in(self, event: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if event not in EVENTS_IN:
            return await super().handle_in(event, payload)
        raw = orjson.dumps(payload)
        with context.bind(host_id=self.host_id):
            try:
                await self._apply(event, raw)
            except ProtocolError as exc:
                metrics.channel_rejected.labels(reason=wire.INVALID).inc()
                log.warning("channels.island_invalid", channel_event=event, error=str(exc))
                return "error", {"reason": wire.INVALID, "detail": str(exc)}
            except Exception:  # database or bus hiccup: nothing was applied; the Island may resend
                log.exception("channels.island_push_failed", channel_event=event)
                return "error", {"reason": "unavailable"}
        return "ok", {}

    async def _apply(self, event: str, raw: bytes) -> None:
        if event in JOB_MESSAGE_KINDS:
            await apply_job_message(self.runtime, self.host_id, event, raw)
            return
        if event == "status":
            await apply_status_message(self.runtime, self.host_id, raw)
            return
        intake = self.runtime.island_intake
        if intake is None:
            raise RuntimeError("the Island intake is not running on this replica")
        if event == "register":
            await intake.register(self.host_id, raw)
        else:
            await intake.heartbeat(self.host_id, raw)
