"""Helpers of the channel-Island tests: pairing a device over HTTP, and one Island script run over either
transport (NATS with nats-py, or the `island:<id>` channel with the official phoenix client)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import nats

from coordinator.protocol.heartbeat import Heartbeat, MobileState, PerformanceEstimates
from coordinator.protocol.messages import Capabilities, RegisterHost
from tests.factories import Consumer
from tests.phoenix_client import PhoenixClient


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class PairedDevice:
    host_id: uuid.UUID
    token: str


async def pair_device(http: httpx.AsyncClient, owner: Consumer, platform: str = "android") -> PairedDevice:
    """The device's pairing request, the owner entering the code, the device's token exchange."""
    started = await http.post("/api/v1/devices/pairing", json={"platform": platform})
    assert started.status_code == 201, started.text
    body = started.json()
    early = await http.post("/api/v1/devices/token", json={"poll_token": body["poll_token"]})
    assert early.status_code == 404  # not entered yet
    paired = await http.post("/api/v1/hosts/pair", headers=owner.headers, json={"code": body["code"]})
    assert paired.status_code == 200, paired.text
    issued = await http.post("/api/v1/devices/token", json={"poll_token": body["poll_token"]})
    assert issued.status_code == 200, issued.text
    data = issued.json()
    return PairedDevice(uuid.UUID(data["host_id"]), data["device_token"])


def register_payload(host_id: uuid.UUID) -> dict[str, Any]:
    return RegisterHost(str(host_id), Capabilities(cpu_cores=8, ram_mb=8192, region=None)).to_dict()


def heartbeat_payload(host_id: uuid.UUID, mobile: MobileState | None = None) -> dict[str, Any]:
    perf = PerformanceEstimates(max_concurrent_containers=2, supported_runtimes=["container", "wasm"])
    beat = Heartbeat(str(host_id), timestamp=now_ms(), performance_estimates=perf, mobile=mobile)
    return beat.to_dict()


class IslandLink(Protocol):
    """What an Island does on the wire, whichever transport carries it."""

    host_id: uuid.UUID

    async def send(self, kind: str, payload: dict[str, Any]) -> None: ...

    async def next_assignment(self, within: float = 15.0) -> dict[str, Any]: ...

    async def close(self) -> None: ...


@dataclass
class NatsLink:
    nats_url: str
    host_id: uuid.UUID = field(default_factory=uuid.uuid4)
    _nc: Any = None
    _jobs: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def open(self) -> NatsLink:
        self._nc = await nats.connect(self.nats_url)

        async def on_job(msg: Any) -> None:  # JetStream-published jobs reach a core subscription too
            await self._jobs.put(json.loads(msg.data))

        await self._nc.subscribe(f"host.{self.host_id}.jobs", cb=on_job)
        await self._nc.flush()
        return self

    async def send(self, kind: str, payload: dict[str, Any]) -> None:
        subject = "coordinator.hosts.register" if kind == "register" else f"host.{self.host_id}.{kind}"
        await self._nc.publish(subject, json.dumps(payload, separators=(",", ":")).encode())
        await self._nc.flush()

    async def next_assignment(self, within: float = 15.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._jobs.get(), within)

    async def close(self) -> None:
        await self._nc.close()


@dataclass
class ChannelLink:
    base_url: str
    device: PairedDevice
    client: PhoenixClient = field(default_factory=PhoenixClient)
    replies: list[dict[str, Any]] = field(default_factory=list)
    _taken: int = 0

    @property
    def host_id(self) -> uuid.UUID:
        return self.device.host_id

    @property
    def topic(self) -> str:
        return f"island:{self.host_id}"

    async def open(self) -> ChannelLink:
        await self.client.start()
        opened = await self.client.connect(self.base_url, self.device.token)
        assert opened["ev"] == "socket_open", opened
        joined = await self.client.join(self.topic)
        assert joined["ev"] == "join_ok", joined
        return self

    async def send(self, kind: str, payload: dict[str, Any]) -> None:
        reply = await self.client.push(self.topic, kind, payload)
        self.replies.append(reply)

    async def next_assignment(self, within: float = 15.0) -> dict[str, Any]:
        index = self._taken
        await self.client.wait_for(
            lambda _: len(self.client.messages(self.topic, "assign_job")) > index, within
        )
        self._taken += 1
        payload: dict[str, Any] = self.client.messages(self.topic, "assign_job")[index]["payload"]
        return payload

    async def close(self) -> None:
        await self.client.close()


async def run_job(
    link: IslandLink, tokens: list[str], after_start: Callable[[str], Awaitable[None]] | None = None
) -> dict[str, Any]:
    """Take the next assignment and play it: started, the tokens (seq from 1), a final chunk, succeeded."""
    job = await link.next_assignment()
    job_id = job["job_id"]
    await link.send("status", {"job_id": job_id, "state": "started", "timestamp": now_ms()})
    if after_start is not None:
        await after_start(job_id)
    for seq, token in enumerate(tokens, start=1):
        await link.send("output", {"job_id": job_id, "seq": seq, "chunk": token, "is_final": False})
    await link.send("lease", {"job_id": job_id, "extend_seconds": 60})
    await link.send("output", {"job_id": job_id, "seq": len(tokens) + 1, "chunk": "", "is_final": True})
    await link.send("status", {"job_id": job_id, "state": "succeeded", "timestamp": now_ms()})
    return job
