"""The Island-facing NATS handlers of the hosts context: register, pairing, heartbeats, ping and probes.

Identity comes from the subject (`host.<id>.…`), never from the payload (island-protocol §2, §10)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from coordinator.hosts import nats_access, pairing
from coordinator.hosts import service as hosts
from coordinator.hosts.fleet import FleetView
from coordinator.hosts.flusher import HeartbeatFlusher
from coordinator.protocol import messages, subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

Handler = Callable[[Any], Awaitable[None]]

# With broker auth, how long a registration waits for its Island to answer `host.<id>.probe`.
PROOF_WINDOW_SECONDS = 30.0


def _host_uuid(raw: str | None) -> uuid.UUID:
    if raw is None or not subjects.valid_host_id(raw):
        raise ProtocolError(f"invalid host id {raw!r}")
    host_id = hosts.parse_host_id(raw)
    if host_id is None:
        raise ProtocolError(f"host id {raw!r} is not a UUID")
    return host_id


class HostHandler:
    """Message handlers; also usable without the supervisor (tests, benchmark)."""

    def __init__(self, runtime: Runtime, fleet: FleetView, flusher: HeartbeatFlusher) -> None:
        self.runtime = runtime
        self.fleet = fleet
        self.flusher = flusher
        self.nc: Any = None
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def approval_required(self) -> bool:
        return self.runtime.settings.approval_required

    def _guard(self, subject_class: str, handler: Handler) -> Handler:
        async def guarded(msg: Any) -> None:
            metrics.nats_messages.labels(subject_class).inc()
            host_id = context.clean_id(subjects.host_id_from_subject(msg.subject))
            with context.bind_from_nats(msg, host_id=host_id):
                try:
                    await handler(msg)
                except ProtocolError as exc:
                    metrics.nats_malformed.labels(subject_class).inc()
                    log.warning("nats.malformed", subject=msg.subject, error=str(exc))
                except Exception:
                    log.exception("nats.handler_failed", subject=msg.subject)

        return guarded

    async def start(self, nc: Any) -> None:
        self.nc = nc
        # Ping first and on its own subscription: a busy heartbeat handler must never delay the reply.
        self._subs = [
            await nc.subscribe(subjects.host_subject("*", "ping"), cb=self.on_ping),
            await nc.subscribe(subjects.REGISTER, cb=self._guard("register", self.on_register)),
            await nc.subscribe(subjects.PAIRING, cb=self._guard("pairing", self.on_pairing)),
            await nc.subscribe(
                subjects.host_subject("*", "heartbeat"),
                cb=self._guard("heartbeat", self.on_heartbeat),
                pending_msgs_limit=200_000,
            ),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_ping(self, msg: Any) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, b"pong")

    async def on_register(self, msg: Any) -> None:
        register = messages.parse_register(msg.data)
        host_id = _host_uuid(register.host_id)
        if self.runtime.settings.nats_auth_enabled:
            # `coordinator.hosts.register` is a shared subject: with broker auth, a registration for X
            # counts only once a holder of X's subjects answers on `host.X.probe` (only X's own credential,
            # or the compatibility mode's shared one, may subscribe there). The Island subscribes to it
            # after pairing, so keep asking for a while, off the message loop.
            self._spawn(self._register_when_proven(register, host_id))
            return
        await self._apply_register(register, host_id)

    async def _register_when_proven(self, register: messages.RegisterHost, host_id: uuid.UUID) -> None:
        deadline = time.monotonic() + PROOF_WINDOW_SECONDS
        while time.monotonic() < deadline:
            if await self.probe(register.host_id, wait_seconds=2.0) is not None:
                async with self.runtime.db.transaction() as session:
                    own = await nats_access.has_own_credential(session, host_id)
                await self._apply_register(register, host_id, probed=True)
                async with self.runtime.db.transaction() as session:
                    kind = nats_access.OWN_CREDENTIAL if own else nats_access.SHARED_CREDENTIAL
                    await nats_access.mark_credential(session, host_id, kind)
                return
            await asyncio.sleep(0.5)
        metrics.nats_rejected.labels("register", "unproven").inc()
        log.warning("hosts.register_unproven", host_id=register.host_id)

    async def _apply_register(
        self, register: messages.RegisterHost, host_id: uuid.UUID, *, probed: bool = False
    ) -> None:
        async with self.runtime.db.transaction() as session:
            host = await hosts.register_host(session, register, approval_required=self.approval_required)
        view = self.fleet.get(host_id)
        fresh = hosts.view_of(host)
        if view is not None:  # keep what heartbeats taught us; take capabilities and decisions from the row
            for attr in ("gpu_model", "gpu_vram_mb", "cpu_cores", "ram_mb", "region"):
                setattr(view, attr, getattr(fresh, attr))
            self.fleet.apply_decision(host_id, host.status, host.approved, host.owner_id)
        else:
            self.fleet.put(fresh)
        log.info("hosts.registered", host_id=register.host_id, status=host.status)
        if not probed:
            self._spawn(self.probe(register.host_id))

    async def on_pairing(self, msg: Any) -> None:
        try:
            request = messages.parse_pairing_request(msg.data)
            host_id = _host_uuid(request.host_id)
        except ProtocolError:
            if msg.reply:  # never leave the Island waiting 10 s
                await self.nc.publish(
                    msg.reply, messages.PairingResponse(False, error="bad request").encode()
                )
            raise
        settings = self.runtime.settings
        if settings.nats_auth_enabled:
            # A host with its own credential was provisioned by its owner: it is paired, and its code
            # (if any) must not be handed to whoever asks on this shared subject.
            async with self.runtime.db.session() as session:
                owned = await nats_access.has_own_credential(session, host_id)
            if owned:
                if msg.reply:
                    answer = messages.PairingResponse(False, error="Island already paired")
                    await self.nc.publish(msg.reply, answer.encode())
                return
        async with self.runtime.db.transaction() as session:
            reply = await pairing.request_pairing(
                session,
                host_id,
                approval_required=settings.approval_required,
                ttl_seconds=settings.pairing_code_ttl_seconds,
                pair_url=f"{self.runtime.base_url}/pair",
            )
        if msg.reply:
            await self.nc.publish(msg.reply, reply.encode())

    async def on_heartbeat(self, msg: Any) -> None:
        raw_id = subjects.host_id_from_subject(msg.subject)
        host_id = _host_uuid(raw_id)
        beat = messages.parse_heartbeat(msg.data)
        if beat.host_id != raw_id:  # the subject is the identity; a payload naming another Island is forged
            raise ProtocolError("payload host_id does not match the subject")
        view = self.fleet.get(host_id)
        if view is None:  # registration lost (coordinator was down): the heartbeat registers it
            async with self.runtime.db.transaction() as session:
                host = await hosts.ensure_host(session, host_id, approval_required=self.approval_required)
            view = self.fleet.get(host_id) or hosts.view_of(host)
            self.fleet.put(view)
        self.fleet.apply_heartbeat(view, beat)
        self.flusher.record(host_id, beat, msg.data)
        metrics.heartbeats.inc()

    async def probe(self, host_id: str, wait_seconds: float = 3.0) -> float | None:
        """Round-trip time of a request on `host.<id>.probe` in ms (None if the Island did not answer)."""
        started = time.perf_counter()
        try:
            await self.nc.request(subjects.host_subject(host_id, "probe"), b"probe", timeout=wait_seconds)
        except Exception:
            return None
        rtt = (time.perf_counter() - started) * 1000
        parsed = hosts.parse_host_id(host_id)
        view = self.fleet.get(parsed) if parsed else None
        if view is not None:
            view.rtt_ms = rtt
        return rtt


class HostHandlerChild(Child):
    """Creates the JetStream streams, then serves the host subjects on the process's NATS connection."""

    name = "nats-hosts"

    def __init__(self, runtime: Runtime, fleet: FleetView, flusher: HeartbeatFlusher) -> None:
        self.runtime = runtime
        self.handler = HostHandler(runtime, fleet, flusher)

    async def run(self, ready: Callable[[], None]) -> None:
        from coordinator.nats.publisher import Publisher
        from coordinator.nats.streams import ensure_streams

        nc = self.runtime.nats
        await ensure_streams(nc.jetstream())
        async with self.runtime.db.session() as session:
            known = await hosts.load_fleet(session, self.handler.fleet)
        self.runtime.components["publisher"] = Publisher(nc, self.runtime.base_url)
        self.runtime.components["host_handler"] = self.handler
        await self.handler.start(nc)
        log.info("hosts.fleet_loaded", hosts=known)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self.handler.stop()

    async def drain(self) -> None:
        await self.handler.stop()
