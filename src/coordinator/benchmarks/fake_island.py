"""A lean simulated fleet for load: many Islands on a few NATS connections, speaking the official wire format.

The reference Island (`coordinator island`) samples real system metrics on every heartbeat, which would
load the machine the coordinator is measured on; this fleet sends the same bytes at far lower cost."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from island.pull import ContinuousPull

STOP_SECONDS = 5.0  # how long `FakeFleet.stop` waits for its cancelled tasks


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def register_message(host_id: str, *, gpu: bool, cores: int = 16, ram_mb: int = 65536) -> bytes:
    return _dumps(
        {
            "host_id": host_id,
            "capabilities": {
                "gpu_model": "NVIDIA GeForce RTX 4090" if gpu else None,
                "gpu_vram_mb": 24564 if gpu else None,
                "cpu_cores": cores,
                "ram_mb": ram_mb,
                "region": "eu-west",
            },
            "version": "0.4.0",
        }
    )


def heartbeat_message(host_id: str, *, active: int, max_concurrent: int, gpu: bool) -> bytes:
    return _dumps(
        {
            "host_id": host_id,
            "status": "online",
            "active_jobs": active,
            "timestamp": int(time.time() * 1000),
            "agent_version": "0.4.0",
            "system": {
                "cpu_percent": 0.0,
                "memory_used_mb": 6021,
                "memory_total_mb": 65536,
                "disk_used_gb": 112,
                "disk_total_gb": 468,
            },
            "cache": {
                "cached_image_count": 1,
                "cached_size_mb": 100,
                "warm_workload_count": 0,
                "warm_workload_ids": [],
            },
            "performance_estimates": {
                "gpu_bandwidth_gb_s": 1008.0 if gpu else None,
                "estimated_llm_tok_s": 123.0 if gpu else None,
                "max_concurrent_containers": max_concurrent,
                "wasm_memory_limit_mb": 49152,
                "supported_runtimes": ["container", "wasm", "diffusers"],
                "nats_rtt_ms": 0.4,
            },
            # An ask below every seeded base price, so the default budget always clears.
            "asking_prices": {"_default": "0.1"},
        }
    )


@dataclass
class JobBehaviour:
    tokens: int = 20
    # Hold the job until `release()` (for streaming benchmarks), else stream at once.
    hold: bool = False
    timestamp_tokens: bool = False


@dataclass
class FakeFleet:
    nats_url: str
    size: int
    max_concurrent: int = 64
    gpu: bool = True
    behaviour: JobBehaviour = field(default_factory=JobBehaviour)
    consume: bool = True
    # Seconds between the fleet's own heartbeats; None when the caller beats for it (`heartbeat_flood`).
    heartbeat_every: float | None = 10.0
    on_assigned: Callable[[str, float], None] | None = None
    host_ids: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # job_id → host_id
    completed: int = 0
    # Publishes (status, output) that raised: a job the coordinator never heard finish.
    publish_failures: int = 0
    _nc: Any = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _active: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        self._nc = await nats.connect(self.nats_url, name="bench-fleet", pending_size=256 * 1024 * 1024)
        self.host_ids = [str(uuid.uuid4()) for _ in range(self.size)]
        for host_id in self.host_ids:
            self._active[host_id] = 0
            await self._nc.publish("coordinator.hosts.register", register_message(host_id, gpu=self.gpu))
        await self.heartbeat_all()
        if self.consume:
            js = self._nc.jetstream()
            for _ in range(100):
                try:
                    await js.stream_info("JOBS")
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            for host_id in self.host_ids:
                durable = f"host-{host_id}"
                await js.add_consumer(
                    "JOBS",
                    ConsumerConfig(
                        name=durable,
                        durable_name=durable,
                        filter_subject=f"host.{host_id}.jobs",
                        ack_policy=AckPolicy.EXPLICIT,
                        max_deliver=5,
                        ack_wait=60,
                    ),
                )
                pull = ContinuousPull(self._nc, "JOBS", durable)
                self._tasks.append(asyncio.create_task(self._consume(host_id, pull)))
        if self.heartbeat_every is not None:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(self.heartbeat_every)))

    async def heartbeat_all(self) -> None:
        for host_id in self.host_ids:
            await self._nc.publish(
                f"host.{host_id}.heartbeat",
                heartbeat_message(
                    host_id, active=self._active[host_id], max_concurrent=self.max_concurrent, gpu=self.gpu
                ),
            )
        await self._nc.flush()

    async def _heartbeat_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.heartbeat_all()

    async def _consume(self, host_id: str, pull: ContinuousPull) -> None:
        """The official Island's continuous pull (island-protocol §3): each job as soon as it lands."""
        async for msg in pull.messages():
            await msg.ack()  # ack on receipt, before parsing, like the official Island
            received = time.perf_counter()
            try:
                job = json.loads(msg.data)
                job_id = job["job_id"]
            except (ValueError, KeyError, TypeError):
                continue
            if self.on_assigned is not None:
                self.on_assigned(job_id, received)
            if self.behaviour.hold:
                self.held[job_id] = host_id
                await self._status(host_id, job_id, "started")
            else:
                self._tasks.append(asyncio.create_task(self.run_job(host_id, job_id)))

    async def _publish(self, subject: str, payload: bytes) -> None:
        try:
            await self._nc.publish(subject, payload)
        except Exception:
            self.publish_failures += 1
            raise

    async def _status(self, host_id: str, job_id: str, state: str) -> None:
        await self._publish(
            f"host.{host_id}.status",
            _dumps({"job_id": job_id, "state": state, "timestamp": int(time.time() * 1000)}),
        )

    async def run_job(
        self, host_id: str, job_id: str, tokens: int | None = None, yield_every: int = 0, pace: float = 0.0
    ) -> None:
        self._active[host_id] += 1
        try:
            await self._status(host_id, job_id, "started")
            count = self.behaviour.tokens if tokens is None else tokens
            for seq in range(1, count + 1):
                if pace:
                    await asyncio.sleep(pace)
                content = f"{time.time():.6f} " if self.behaviour.timestamp_tokens else f"tok{seq} "
                await self._publish(
                    f"host.{host_id}.output",
                    _dumps({"job_id": job_id, "seq": seq, "chunk": content, "is_final": False}),
                )
                if yield_every and seq % yield_every == 0:
                    await asyncio.sleep(0)
            await self._publish(
                f"host.{host_id}.output",
                _dumps({"job_id": job_id, "seq": count + 1, "chunk": "", "is_final": True}),
            )
            await self._status(host_id, job_id, "succeeded")
            self.completed += 1
        finally:
            self._active[host_id] -= 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Bounded: a consumer can outlive its cancel (on Python 3.11 the `wait_for` under nats-py's
        # `next_msg` may swallow a cancel that lands as a message arrives, and the pull goes on); closing
        # the connection below ends it. (An unbounded wait hung a whole bench run after its scenario.)
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: a job task's publish that failed is counted already
        if self._nc is not None:
            # Close, not drain: draining waits out every outstanding pull request (up to 30 s).
            await self._nc.flush()
            await self._nc.close()


async def heartbeat_flood(
    nats_url: str,
    host_ids: list[str],
    duration: float,
    interval: float = 10.0,
    on_sent: Callable[[int], None] | None = None,
    on_failed: Callable[[int], None] | None = None,
) -> int:
    """Every id beats once per `interval`, spread evenly, for `duration` seconds. Returns beats sent;
    `on_sent`/`on_failed` hear of each tick's beats sent and of publishes that raised."""
    nc = await nats.connect(nats_url, name="bench-heartbeats")
    sent = 0
    per_tick = max(1, len(host_ids) // int(interval * 10))
    deadline = time.monotonic() + duration
    index = 0
    try:
        while time.monotonic() < deadline:
            tick = time.monotonic()
            ticked = 0
            for _ in range(per_tick):
                host_id = host_ids[index % len(host_ids)]
                index += 1
                try:
                    await nc.publish(
                        f"host.{host_id}.heartbeat",
                        heartbeat_message(host_id, active=0, max_concurrent=4, gpu=False),
                    )
                except Exception:
                    if on_failed is None:
                        raise
                    on_failed(1)
                    continue
                sent += 1
                ticked += 1
            if on_sent is not None:
                on_sent(ticked)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    finally:
        await nc.drain()
    return sent
