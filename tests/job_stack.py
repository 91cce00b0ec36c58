"""A coordinator with its job pipeline over a real NATS (JetStream) and the HTTP API, for job tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from coordinator.app import HttpChild, NatsConnectionChild, build_runtime, job_children
from coordinator.hosts.fleet import FleetView
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from tests.conftest import make_settings
from tests.factories import Consumer
from tests.fake_island import FakeIsland
from tests.job_support import make_island


@dataclass
class JobStack:
    runtime: Runtime
    http: httpx.AsyncClient

    @property
    def fleet(self) -> FleetView:
        fleet = self.runtime.fleet
        assert fleet is not None
        return fleet


@asynccontextmanager
async def job_stack(
    database_url: str, nats_url: str, leave_out: tuple[type, ...] = (), **overrides: Any
) -> AsyncIterator[JobStack]:
    """The stack; `leave_out`: job children the test runs by hand (their classes)."""
    values: dict[str, Any] = {"nats_url": nats_url, "lease_sweep_interval_seconds": 0.2}
    values.update(overrides)
    runtime = build_runtime(make_settings(database_url, **values))
    children = [c for c in job_children(runtime) if not isinstance(c, leave_out)]
    supervisor = Supervisor([NatsConnectionChild(runtime), *children, HttpChild(runtime)])
    await supervisor.start()
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            yield JobStack(runtime, client)
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns a truthy value; fail with the last value after `within` seconds."""
    deadline = time.monotonic() + within
    value: Any = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last value {value!r})")


CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello", "max_tokens": 16}}


async def islands(
    stack: JobStack, nats_url: str, *behaviours: str, delay: float = 0.0, **kw: Any
) -> list[FakeIsland]:
    started = []
    for behaviour in behaviours:
        island = FakeIsland(nats_url, behaviour=behaviour, delay=delay)
        await make_island(stack.runtime, host_id=island.host_id, fleet=stack.fleet, **kw)
        await island.start()
        started.append(island)
    stack.fleet.notify_capacity()
    return started


async def submit(stack: JobStack, consumer: Consumer, body: dict[str, Any] = CHAT) -> str:
    response = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["data"]["id"]
    return job_id


async def status_of(stack: JobStack, consumer: Consumer, job_id: str) -> dict[str, Any]:
    response = await stack.http.get(f"/api/v1/jobs/{job_id}", headers=consumer.headers)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()["data"]
    return data


async def wait_status(stack: JobStack, consumer: Consumer, job_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await status_of(stack, consumer, job_id)
        return job if job["status"] == status else None

    result: dict[str, Any] = await eventually(check)
    return result
