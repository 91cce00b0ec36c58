"""One Phoenix socket over a Starlette WebSocket: heartbeats, joins and leaves, replies, channel routing.

A socket is one coroutine reading frames (no task per socket while idle); channels that stream start
their own task. Bad input never crashes the socket: a frame that cannot be read, a topic nobody serves,
a push to a channel not joined, a payload over 8 MiB each get an error reply (or, for an unreadable
frame, a close with the reason) and are counted in `coordinator_channel_rejected_frames_total`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from coordinator.accounts.service import Principal
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics
from coordinator.web.channels import protocol as wire
from coordinator.web.channels.protocol import Frame, FrameError

log = structlog.get_logger(__name__)

# WebSocket close codes: 1008 policy violation (credential revoked), 1009 too big, 4000+ application.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_IDLE = 4000
CLOSE_MALFORMED = 4001


@dataclass(frozen=True)
class Device:
    """An Island device token's holder: the Island it speaks for and the token (to revoke it)."""

    host_id: str
    token_id: str


@dataclass(frozen=True)
class Identity:
    """Who a socket acts for: a user (API key or web session) or a paired Island device."""

    principal: Principal | None = None
    device: Device | None = None


class JoinRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel:
    """One joined topic. Subclasses implement `join` (→ the join reply) and `handle_in` (→ a reply)."""

    kind = "channel"

    def __init__(self, socket: ChannelSocket, topic: str, join_ref: str | None) -> None:
        self.socket = socket
        self.topic = topic
        self.join_ref = join_ref
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def runtime(self) -> Runtime:
        return self.socket.runtime

    @property
    def identity(self) -> Identity:
        return self.socket.identity

    async def join(self, payload: dict[str, Any]) -> dict[str, Any]:
        raise JoinRefused(wire.UNKNOWN_TOPIC)

    async def after_join(self) -> None:
        """Runs once the join reply is sent (start streaming here)."""

    async def handle_in(self, event: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        metrics.channel_rejected.labels(reason=wire.UNKNOWN_EVENT).inc()
        return "error", {"reason": wire.UNKNOWN_EVENT}

    async def terminate(self) -> None:
        """The channel ends (leave, close, socket gone): stop its tasks."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def push(self, event: str, payload: dict[str, Any]) -> None:
        await self.socket.send(wire.push(self.join_ref, self.topic, event, payload))

    async def push_raw(self, event: str, payload_json: str) -> None:
        await self.socket.send(wire.encode_raw(self.join_ref, self.topic, event, payload_json))

    def spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` beside the socket; if it fails, the client gets `phx_error` and the channel ends."""

        async def guarded() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("channel.failed", topic=self.topic)
                await self.socket.fail_channel(self)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


ChannelFactory = Callable[["ChannelSocket", str, "str | None"], Channel]


class ChannelSocket:
    """Serves one accepted WebSocket until it closes."""

    def __init__(
        self,
        websocket: WebSocket,
        runtime: Runtime,
        identity: Identity,
        factories: dict[str, ChannelFactory],
        *,
        idle_timeout: float,
    ) -> None:
        self.websocket = websocket
        self.runtime = runtime
        self.identity = identity
        self.factories = factories
        self.idle_timeout = idle_timeout
        self.channels: dict[str, Channel] = {}
        self._send_lock = asyncio.Lock()
        self.closed = False

    async def send(self, text: str) -> None:
        if self.closed:
            return
        async with self._send_lock:
            try:
                await self.websocket.send_text(text)
            except Exception:  # the peer went away: the read loop ends the socket
                self.closed = True

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """End the socket from the server side (revoked credential, idle, unreadable frame)."""
        if self.closed:
            return
        self.closed = True
        async with self._send_lock:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=code, reason=reason)

    async def serve(self) -> None:
        metrics.open_streams.labels(kind="socket").inc()
        try:
            await self._read_loop()
        finally:
            metrics.open_streams.labels(kind="socket").dec()
            self.closed = True
            for channel in list(self.channels.values()):
                await self._end(channel)

    async def _read_loop(self) -> None:
        while not self.closed:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    message = await self.websocket.receive()
            except TimeoutError:
                await self.close(CLOSE_IDLE, "heartbeat timeout")
                return
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                if message.get("code") == CLOSE_TOO_BIG:  # the server's own frame limit cut it off
                    metrics.channel_rejected.labels(reason=wire.TOO_LARGE).inc()
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await self.on_frame(data)

    async def on_frame(self, data: str | bytes) -> None:
        try:
            frame = wire.decode(data)
        except FrameError as exc:
            metrics.channel_rejected.labels(reason=exc.reason).inc()
            if exc.frame is not None:  # readable enough to answer
                await self.send(wire.error_reply(exc.frame, exc.reason))
            elif exc.reason == wire.TOO_LARGE:
                await self.close(CLOSE_TOO_BIG, "frame larger than 8 MiB")
            else:
                await self.close(CLOSE_MALFORMED, "malformed frame")
            return
        try:
            await self.route(frame)
        except Exception:
            log.exception("channel.frame_failed", topic=frame.topic, channel_event=frame.event)
            channel = self.channels.get(frame.topic)
            if channel is not None:
                await self.fail_channel(channel)
            else:
                await self.send(wire.error_reply(frame, "internal_error"))

    async def route(self, frame: Frame) -> None:
        if frame.topic == wire.PHOENIX_TOPIC and frame.event == wire.HEARTBEAT:
            await self.send(wire.reply(frame, "ok"))
            return
        if frame.event == wire.JOIN:
            await self.join(frame)
            return
        channel = self.channels.get(frame.topic)
        if channel is None or (frame.join_ref is not None and frame.join_ref != channel.join_ref):
            metrics.channel_rejected.labels(reason=wire.NOT_JOINED).inc()
            await self.send(wire.error_reply(frame, wire.NOT_JOINED))
            return
        if frame.event == wire.LEAVE:
            await self._end(channel)
            await self.send(wire.reply(frame, "ok"))
            await self.send(wire.channel_close(channel.join_ref, channel.topic))
            return
        status, response = await channel.handle_in(frame.event, frame.payload)
        await self.send(wire.reply(frame, status, response))

    async def join(self, frame: Frame) -> None:
        kind, _ = wire.topic_kind(frame.topic)
        factory = self.factories.get(kind)
        if factory is None:
            metrics.channel_rejected.labels(reason=wire.UNKNOWN_TOPIC).inc()
            metrics.channel_joins.labels(kind="unknown", outcome=wire.UNKNOWN_TOPIC).inc()
            await self.send(wire.error_reply(frame, wire.UNKNOWN_TOPIC))
            return
        previous = self.channels.get(frame.topic)
        if previous is not None:  # a re-join replaces the old channel (Phoenix closes the old one)
            await self._end(previous)
            await self.send(wire.channel_close(previous.join_ref, previous.topic))
        channel = factory(self, frame.topic, frame.join_ref)
        try:
            response = await channel.join(frame.payload)
        except JoinRefused as refused:
            metrics.channel_joins.labels(kind=kind, outcome=refused.reason).inc()
            await self.send(wire.error_reply(frame, refused.reason))
            return
        metrics.channel_joins.labels(kind=kind, outcome="ok").inc()
        self.channels[frame.topic] = channel
        await self.send(wire.reply(frame, "ok", response))
        await channel.after_join()

    async def _end(self, channel: Channel) -> None:
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
        await channel.terminate()

    async def fail_channel(self, channel: Channel) -> None:
        """A channel's work crashed: drop it and tell the client (`phx_error`), keep the socket."""
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
        await self.send(wire.channel_error(channel.join_ref, channel.topic))
        asyncio.get_running_loop().create_task(channel.terminate())
