"""This replica's channel Islands and device sockets: where pushes for an Island land, and what a revoked
device token cuts off.

Two NATS core subscriptions per process, made when the first Island channel joins: the Island pushes
(`coordinator.channels.island.*`, delivered to the channel if this replica holds it) and device-token
revocations (`coordinator.channels.revoked`, closing this replica's sockets of that token)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from coordinator.nats.island_push import PUSH_PREFIX, REVOKED_SUBJECT, decode_push
from coordinator.runtime import Runtime

if TYPE_CHECKING:
    from coordinator.web.channels.island_channel import IslandChannel
    from coordinator.web.channels.socket import ChannelSocket

log = structlog.get_logger(__name__)

CLOSE_REVOKED = 4003


class ChannelRegistry:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.islands: dict[uuid.UUID, IslandChannel] = {}
        self.device_sockets: dict[str, set[ChannelSocket]] = {}
        self._nc: Any = None
        self._subs: list[Any] = []
        self._attach_lock = asyncio.Lock()

    async def ensure_attached(self) -> None:
        """Subscribe on the process's current NATS connection (once; again after it was replaced)."""
        nc = self.runtime.nats
        if nc is None or nc is self._nc:
            return
        async with self._attach_lock:
            if nc is self._nc:
                return
            self._subs = [
                await nc.subscribe(f"{PUSH_PREFIX}.*", cb=self._on_push),
                await nc.subscribe(REVOKED_SUBJECT, cb=self._on_revoked),
            ]
            await nc.flush()
            self._nc = nc

    async def detach(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs, self._nc = [], None

    # ------------------------------------------------------------ Islands

    def add_island(self, channel: IslandChannel) -> None:
        previous = self.islands.get(channel.host_id)
        self.islands[channel.host_id] = channel
        if previous is not None and previous is not channel:
            log.info("channels.island_replaced", host_id=str(channel.host_id))

    def remove_island(self, channel: IslandChannel) -> None:
        if self.islands.get(channel.host_id) is channel:
            del self.islands[channel.host_id]

    async def _on_push(self, msg: Any) -> None:
        raw = msg.subject.rpartition(".")[2]
        try:
            host_id = uuid.UUID(raw)
        except ValueError:
            return
        channel = self.islands.get(host_id)
        decoded = decode_push(msg.data)
        if channel is None or decoded is None:
            return
        event, payload = decoded
        await channel.push(event, payload)

    # ------------------------------------------------------------ device tokens

    def add_device_socket(self, token_id: str, socket: ChannelSocket) -> None:
        self.device_sockets.setdefault(token_id, set()).add(socket)

    def remove_device_socket(self, token_id: str, socket: ChannelSocket) -> None:
        sockets = self.device_sockets.get(token_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.device_sockets[token_id]

    async def revoke(self, token_id: str) -> None:
        """Close every socket of a revoked device token, on this replica and (over NATS) every other."""
        await self.close_device(token_id)
        nc = self.runtime.nats
        if nc is not None:
            await nc.publish(REVOKED_SUBJECT, token_id.encode())

    async def _on_revoked(self, msg: Any) -> None:
        await self.close_device(msg.data.decode(errors="replace"))

    async def close_device(self, token_id: str) -> None:
        for socket in list(self.device_sockets.get(token_id, ())):
            log.info("channels.device_revoked", token_id=token_id)
            await socket.close(CLOSE_REVOKED, "device token revoked")
