"""A coordinator with its job pipeline over a real NATS (JetStream) and the HTTP API, for job tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from coordinator.app import HttpChild, NatsConnectionChild, job_children
from coordinator.hosts.fleet import FleetView
from coordinator.jobs import service
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from tests.conftest import make_settings


@dataclass
class JobStack:
    runtime: Runtime
    http: httpx.AsyncClient

    @property
    def fleet(self) -> FleetView:
        fleet = service.fleet_of(self.runtime)
        assert fleet is not None
        return fleet


@asynccontextmanager
async def job_stack(database_url: str, nats_url: str, **overrides: Any) -> AsyncIterator[JobStack]:
    values: dict[str, Any] = {"nats_url": nats_url, "lease_sweep_interval_seconds": 0.2}
    values.update(overrides)
    runtime = Runtime.from_settings(make_settings(database_url, **values))
    supervisor = Supervisor([NatsConnectionChild(runtime), *job_children(runtime), HttpChild(runtime)])
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
