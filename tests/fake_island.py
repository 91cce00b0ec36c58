"""A fake Island for job tests, written with nats-py directly, publishing byte-exact protocol messages.

It consumes its JetStream consumer `host-<id>` with the Island's own consumer configuration, acks each
AssignJob on receipt (before parsing, as the Island does), and then plays a scripted behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def dumps(value: Any) -> bytes:
    """serde_json::to_vec equivalent: compact, raw UTF-8 (island-protocol §0.1)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class FakeIsland:
    nats_url: str
    host_id: uuid.UUID = field(default_factory=uuid.uuid4)
    # succeed | fail | silent (ack, never start) | hang (start, then nothing)
    behaviour: str = "succeed"
    chunks: tuple[str, ...] = ("Hel", "lo")
    delay: float = 0.0
    # Pause between output chunks (a model producing tokens over time).
    chunk_delay: float = 0.0
    # Publish an EnhancedHeartbeat (§4.3) this often; None sends none (the test fills the fleet itself).
    heartbeat_every: float | None = None
    max_concurrent: int = 4
    # `performance_estimates.supported_runtimes` of its heartbeats; None leaves the field out.
    runtimes: tuple[str, ...] | None = ("container", "wasm")
    active: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    _nc: Any = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.host_id)

    async def start(self) -> None:
        self._nc = await nats.connect(self.nats_url, name=f"island-{self.id[:8]}")
        js = self._nc.jetstream()
        config = ConsumerConfig(
            name=f"host-{self.id}",  # CONSUMER.CREATE.JOBS.<name>.<filter>, as the official Island
            durable_name=f"host-{self.id}",
            filter_subject=f"host.{self.id}.jobs",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=5,
            ack_wait=60,
        )
        await js.add_consumer("JOBS", config)
        psub = await js.pull_subscribe_bind(durable=f"host-{self.id}", stream="JOBS")

        async def on_cancel(msg: Any) -> None:
            with contextlib.suppress(ValueError, KeyError):
                self.cancels.append(json.loads(msg.data)["job_id"])

        await self._nc.subscribe(f"host.{self.id}.cancel", cb=on_cancel)
        self._tasks.append(asyncio.create_task(self._pull(psub)))
        if self.heartbeat_every is not None:
            self._tasks.append(asyncio.create_task(self._beat(self.heartbeat_every)))

    def heartbeat(self) -> dict[str, Any]:
        beat: dict[str, Any] = {
            "host_id": self.id,
            "status": "online",
            "active_jobs": self.active,
            "timestamp": now_ms(),
            "agent_version": "0.4.0",
            "system": {
                "cpu_percent": 0.0,
                "memory_used_mb": 6021,
                "memory_total_mb": 15935,
                "disk_used_gb": 112,
                "disk_total_gb": 468,
            },
            "cache": {
                "cached_image_count": 0,
                "cached_size_mb": 0,
                "warm_workload_count": 0,
                "warm_workload_ids": [],
            },
            "performance_estimates": {
                "gpu_bandwidth_gb_s": None,
                "estimated_llm_tok_s": None,
                "max_concurrent_containers": self.max_concurrent,
                "wasm_memory_limit_mb": 11951,
                "supported_runtimes": list(self.runtimes or ()),
                "nats_rtt_ms": 0.412,
            },
        }
        if self.runtimes is None:
            del beat["performance_estimates"]["supported_runtimes"]
        return beat

    async def _beat(self, every: float) -> None:
        while True:
            await self.publish("heartbeat", self.heartbeat())
            await asyncio.sleep(every)

    async def _pull(self, psub: Any) -> None:
        while True:
            # Like the Island's continuous pull: long-poll for one, then take whatever else is waiting.
            try:
                msgs = await psub.fetch(1, timeout=5)
                with contextlib.suppress(TimeoutError, NatsTimeout):
                    msgs += await psub.fetch(50, timeout=0.01)
            except (TimeoutError, NatsTimeout):
                continue
            for msg in msgs:
                await msg.ack()  # ack-on-spawn: before parsing
                try:
                    job = json.loads(msg.data)
                except ValueError:
                    continue
                self.received.append(job)
                self._tasks.append(asyncio.create_task(self._run(job)))

    async def publish(self, suffix: str, payload: dict[str, Any]) -> None:
        await self._nc.publish(f"host.{self.id}.{suffix}", dumps(payload))

    async def status(self, job_id: str, state: str, error: str | None = None) -> None:
        payload: dict[str, Any] = {"job_id": job_id, "state": state}
        if error is not None:
            payload["error"] = error
        payload["timestamp"] = now_ms()
        await self.publish("status", payload)

    async def _run(self, job: dict[str, Any]) -> None:
        self.active += 1
        try:
            await self._play(job)
        finally:
            self.active -= 1

    async def _play(self, job: dict[str, Any]) -> None:
        job_id = job["job_id"]
        if self.behaviour == "silent":
            return
        await self.status(job_id, "started")
        if self.behaviour == "hang":
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.behaviour == "fail":
            await self.status(job_id, "failed", "Container crash: General error (application failure)")
            return
        for seq, chunk in enumerate(self.chunks, start=1):
            if seq > 1 and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await self.publish("output", {"job_id": job_id, "seq": seq, "chunk": chunk, "is_final": False})
        final = {"job_id": job_id, "seq": len(self.chunks) + 1, "chunk": "", "is_final": True}
        await self.publish("output", final)
        await self.status(job_id, "succeeded")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
