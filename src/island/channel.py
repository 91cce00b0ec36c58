"""`--transport channel`: the reference Island as a phone or browser Island, over the `island:<id>` channel.

The same agent (`island.agent.Island`: jobs, runtimes, leases, heartbeats) with its NATS connection
replaced by a Phoenix socket: every publish becomes a push of the same payload on the channel
(`host.<id>.output` → event `output`…), and `assign_job` / `cancel_job` / `preload` pushes from the
coordinator are handled like the NATS messages. Pairing is the device flow: the Island shows a code
(or, given an owner's API key, enters it itself — for simulated fleets), then keeps its device token in
state.json beside its host id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import structlog
import websockets

from coordinator.protocol import subjects
from coordinator.protocol.heartbeat import MobileState
from coordinator.protocol.messages import Heartbeat
from island.agent import Island, IslandConfig

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 30.0
REPLY_TIMEOUT_SECONDS = 10.0
PAIRING_POLL_SECONDS = 1.0

PushHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class PhoenixLink:
    """A minimal Phoenix V2 JSON client on `websockets`: one socket, one joined topic, replies by ref."""

    def __init__(self, url: str, token: str, topic: str, on_push: PushHandler) -> None:
        base = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        self.url = f"{base}/socket/websocket?vsn=2.0.0&token={token}"
        self.topic = topic
        self.on_push = on_push
        self.ws: Any = None
        self.join_ref: str | None = None
        self._refs = count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()

    async def connect(self) -> dict[str, Any]:
        """Open the socket and join the topic; returns the join reply (raises if refused)."""
        self.ws = await websockets.connect(self.url, max_size=16 * 1024 * 1024)
        self.closed.clear()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._heartbeat())]
        self.join_ref = str(next(self._refs))
        reply = await self._request(self.join_ref, self.topic, "phx_join", {}, ref=self.join_ref)
        if reply.get("status") != "ok":
            raise ConnectionRefusedError(f"join {self.topic} refused: {reply.get('response')}")
        return reply

    async def _request(
        self, join_ref: str | None, topic: str, event: str, payload: dict[str, Any], ref: str | None = None
    ) -> dict[str, Any]:
        ref = ref or str(next(self._refs))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.ws.send(json.dumps([join_ref, ref, topic, event, payload], separators=(",", ":")))
            return await asyncio.wait_for(future, REPLY_TIMEOUT_SECONDS)
        finally:
            self._pending.pop(ref, None)

    async def push(self, event: str, payload: dict[str, Any], *, wait: bool = False) -> dict[str, Any] | None:
        """Send a push on the joined topic; frames go out in order, so only callers that need the
        answer wait for it."""
        if wait:
            return await self._request(self.join_ref, self.topic, event, payload)
        ref = str(next(self._refs))
        frame = [self.join_ref, ref, self.topic, event, payload]
        await self.ws.send(json.dumps(frame, separators=(",", ":")))
        return None

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                _, ref, topic, event, payload = json.loads(raw)
                if event == "phx_reply":
                    future = self._pending.get(ref)
                    if future is not None and not future.done():
                        future.set_result(payload)
                    elif payload.get("status") != "ok":
                        log.warning("island.push_refused", topic=topic, response=payload.get("response"))
                elif topic == self.topic and event in ("phx_close", "phx_error"):
                    log.warning("island.channel_ended", topic=topic, event=event)
                    await self.ws.close()
                elif topic == self.topic:
                    await self.on_push(event, payload)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(Exception):
                await self._request(None, "phoenix", "heartbeat", {})

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.closed.set()


class ChannelPublisher:
    """Stands in for the NATS connection: `publish(subject, data)` becomes a push of the same payload."""

    def __init__(self, link: PhoenixLink) -> None:
        self.link = link

    async def publish(self, subject: str, data: bytes) -> None:
        event = "register" if subject == subjects.REGISTER else subject.rsplit(".", 1)[-1]
        await self.link.push(event, json.loads(data))


@dataclass
class DeviceCredential:
    host_id: str
    device_token: str


def credential_path(state_dir: Path) -> Path:
    return state_dir / "device.json"


async def pair_device(
    api_url: str, state_dir: Path, *, owner_key: str | None = None, platform: str = "android"
) -> DeviceCredential:
    """The stored device token, else the device pairing flow (the owner enters the code shown, or the
    Island enters it with `owner_key`)."""
    path = credential_path(state_dir)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(path.read_text())
        return DeviceCredential(str(data["host_id"]), str(data["device_token"]))
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        started = (await http.post("/api/v1/devices/pairing", json={"platform": platform})).raise_for_status()
        body = started.json()
        log.info("island.pairing_code", code=body["code"], minutes=body["expires_in_seconds"] // 60)
        if owner_key is not None:
            headers = {"Authorization": f"Bearer {owner_key}"}
            (
                await http.post("/api/v1/hosts/pair", json={"code": body["code"]}, headers=headers)
            ).raise_for_status()
        deadline = time.monotonic() + body["expires_in_seconds"]
        while time.monotonic() < deadline:
            answer = await http.post("/api/v1/devices/token", json={"poll_token": body["poll_token"]})
            if answer.status_code == 200:
                issued = answer.json()
                credential = DeviceCredential(issued["host_id"], issued["device_token"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(
                    json.dumps({"host_id": credential.host_id, "device_token": credential.device_token})
                )
                return credential
            if answer.status_code != 404:
                answer.raise_for_status()
            await asyncio.sleep(PAIRING_POLL_SECONDS)
    raise TimeoutError("the pairing code expired before it was entered")


class ChannelIsland(Island):
    """The reference Island over the `island:<host_id>` channel (a phone or browser Island)."""

    def __init__(
        self,
        config: IslandConfig,
        api_url: str,
        *,
        owner_key: str | None = None,
        mobile: MobileState | None = None,
    ) -> None:
        super().__init__(config)
        self.api_url = api_url
        self.owner_key = owner_key
        self.mobile = mobile or MobileState(
            battery_level=100, charging=True, thermal_state="nominal", network="wifi"
        )
        self.link: PhoenixLink | None = None

    async def start(self) -> None:
        credential = await pair_device(self.api_url, self.config.state_dir, owner_key=self.owner_key)
        self.host_id = credential.host_id
        self.state.host_id = credential.host_id
        self.state.mark_paired(self.state_path)
        self.link = PhoenixLink(
            self.api_url, credential.device_token, f"island:{self.host_id}", self._on_push
        )
        await self.link.connect()
        self.nc = ChannelPublisher(self.link)
        await self.link.push("register", self.register_message().to_dict(), wait=True)
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}:heartbeat"))
        log.info("island.started", host_id=self.host_id, transport="channel")

    def register_message(self) -> Any:
        from coordinator.protocol.messages import RegisterHost
        from island.agent import AGENT_VERSION

        return RegisterHost(self.host_id, self.capabilities, AGENT_VERSION)

    async def stop(self) -> None:
        await self.stop_tasks()
        if self.link is not None:
            await self.link.close()

    async def _on_push(self, event: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        if event == "assign_job":
            self._start_job(data)
        elif event == "cancel_job":
            await self._cancel(data)
        elif event == "preload":
            self._preload(data)

    async def measure_rtt(self) -> float:
        started = time.perf_counter()
        assert self.link is not None
        await self.link._request(None, "phoenix", "heartbeat", {})
        return (time.perf_counter() - started) * 1000

    def heartbeat(self) -> Heartbeat:
        beat = super().heartbeat()
        beat.mobile = self.mobile
        return beat
