"""The Island-facing NATS handlers of the hosts context: register, pairing, heartbeats, ping and probes.

Identity comes from the subject (`host.<id>.…`), never from the payload (island-protocol §2, §10).
Registration and heartbeats go through `hosts.intake.IslandIntake`, which the channel transport shares."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from coordinator.hosts import nats_access, pairing
from coordinator.hosts import service as hosts
from coordinator.hosts.fleet import FleetView
from coordinator.hosts.flusher import HeartbeatFlusher
from coordinator.hosts.intake import IslandIntake, host_uuid
from coordinator.protocol import messages, subjects
from coordinator.protocol.codec import ProtocolError
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

Handler = Callable[[Any], Awaitable[None]]

# With broker auth, how long a registration waits for its Island to answer `host.<id>.probe`.
PROOF_WINDOW_SECONDS = 30.0


_host_uuid = host_uuid


class HostHandler:
    """Message handlers; also usable without the supervisor (tests, benchmark)."""

    def __init__(self, runtime: Runtime, fleet: FleetView, flusher: HeartbeatFlusher) -> None:
        self.runtime = runtime
        self.fleet = fleet
        self.flusher = flusher
        self.intake = IslandIntake(runtime, fleet, flusher)
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
        if self.runtime.settings.nats_auth_enabled:
            # `coordinator.hosts.register` is a shared subject: with broker auth, a registration for X
            # counts only once a holder of X's subjects answers on `host.X.probe` (only X's own credential,
            # or the compatibility mode's shared one, may subscribe there). The Island subscribes to it
            # after pairing, so keep asking for a while, off the message loop.
            register = messages.parse_register(msg.data)  # a malformed one is counted by the guard
            self._spawn(self._register_when_proven(register, msg.data))
            return
        host = await self.intake.register(None, msg.data)
        self._spawn(self.probe(str(host.id)))

    async def _register_when_proven(self, register: messages.RegisterHost, payload: bytes) -> None:
        host_id = host_uuid(register.host_id)
        deadline = time.monotonic() + PROOF_WINDOW_SECONDS
        while time.monotonic() < deadline:
            if await self.probe(register.host_id, wait_seconds=2.0) is not None:
                async with self.runtime.db.transaction() as session:
                    own = await nats_access.has_own_credential(session, host_id)
                await self.intake.register(None, payload)
                async with self.runtime.db.transaction() as session:
                    kind = nats_access.OWN_CREDENTIAL if own else nats_access.SHARED_CREDENTIAL
                    await nats_access.mark_credential(session, host_id, kind)
                return
            await asyncio.sleep(0.5)
        metrics.nats_rejected.labels("register", "unproven").inc()
        log.warning("hosts.register_unproven", host_id=register.host_id)

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
        # The subject is the identity; a payload naming another Island is forged (refused by the intake).
        await self.intake.heartbeat(_host_uuid(subjects.host_id_from_subject(msg.subject)), msg.data)

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

    def __init__(self, runtime: Runtime, flusher: HeartbeatFlusher) -> None:
        self.runtime = runtime
        self.handler = HostHandler(runtime, runtime.fleet, flusher)

    async def run(self, ready: Callable[[], None]) -> None:
        from coordinator.nats.publisher import Publisher
        from coordinator.nats.streams import ensure_streams

        nc = self.runtime.nats
        await ensure_streams(nc.jetstream(), self.runtime.settings.nats_stream_replicas)
        async with self.runtime.db.session() as session:
            known = await hosts.load_fleet(session, self.handler.fleet)
        self.runtime.publisher = Publisher(nc, self.runtime.base_url)
        self.runtime.host_handler = self.handler
        self.runtime.island_intake = self.handler.intake
        await self.handler.start(nc)
        log.info("hosts.fleet_loaded", hosts=known)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self.handler.stop()

    async def drain(self) -> None:
        await self.handler.stop()
