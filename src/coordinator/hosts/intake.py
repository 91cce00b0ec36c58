"""Island intake of the hosts context: registration and heartbeats, whichever transport carried them.

The NATS host handler (identity = the subject's host id) and the `island:<id>` channel (identity = the
device token) both call these, so registration, liveness, capacity, mobile self-gating and the
forged-identity check are one code path."""

from __future__ import annotations

import uuid

import structlog

from coordinator.hosts import rules
from coordinator.hosts import service as hosts
from coordinator.hosts.fleet import FleetView
from coordinator.hosts.flusher import HeartbeatFlusher
from coordinator.hosts.models import Host
from coordinator.protocol import messages, subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)


def host_uuid(raw: str | None) -> uuid.UUID:
    if raw is None or not subjects.valid_host_id(raw):
        raise ProtocolError(f"invalid host id {raw!r}")
    host_id = hosts.parse_host_id(raw)
    if host_id is None:
        raise ProtocolError(f"host id {raw!r} is not a UUID")
    return host_id


class IslandIntake:
    """Registration and heartbeats into the fleet view (and, batched, the `hosts` table)."""

    def __init__(self, runtime: Runtime, fleet: FleetView, flusher: HeartbeatFlusher) -> None:
        self.runtime = runtime
        self.fleet = fleet
        self.flusher = flusher

    @property
    def approval_required(self) -> bool:
        return self.runtime.settings.approval_required

    async def register(self, sender: uuid.UUID | None, payload: bytes) -> Host:
        """A RegisterHost. `sender` is the authenticated Island (None on NATS, where the registration
        subject names nobody and the payload's id is taken as is)."""
        register = messages.parse_register(payload)
        host_id = host_uuid(register.host_id)
        if sender is not None and host_id != sender:
            raise ProtocolError("payload host_id does not match the sender")
        async with self.runtime.db.transaction() as session:
            host = await hosts.register_host(session, register, approval_required=self.approval_required)
        view = self.fleet.get(host_id)
        fresh = hosts.view_of(host)
        if view is not None:  # keep what heartbeats taught us; take capabilities and decisions from the row
            for attr in ("gpu_model", "gpu_vram_mb", "cpu_cores", "ram_mb", "region", "transport"):
                setattr(view, attr, getattr(fresh, attr))
            self.fleet.apply_decision(host_id, host.status, host.approved, host.owner_id)
        else:
            self.fleet.put(fresh)
        log.info("hosts.registered", host_id=register.host_id, status=host.status)
        return host

    async def heartbeat(self, sender: uuid.UUID, payload: bytes) -> None:
        """An EnhancedHeartbeat from the authenticated Island `sender`; a payload naming another Island
        is forged and refused."""
        beat = messages.parse_heartbeat(payload)
        if hosts.parse_host_id(beat.host_id) != sender:
            raise ProtocolError("payload host_id does not match the sender")
        view = self.fleet.get(sender)
        if view is None:  # registration lost (coordinator was down): the heartbeat registers it
            async with self.runtime.db.transaction() as session:
                host = await hosts.ensure_host(session, sender, approval_required=self.approval_required)
            view = self.fleet.get(sender) or hosts.view_of(host)
            self.fleet.put(view)
        was_gated, view.self_gated = view.self_gated, rules.self_gated(beat.mobile)
        self.fleet.apply_heartbeat(view, beat)
        if was_gated and not view.self_gated:  # back on the charger / wifi: capacity appeared
            self.fleet.notify_capacity()
        self.flusher.record(sender, beat, payload)
        metrics.heartbeats.inc()
