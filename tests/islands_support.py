"""Shared helpers of the Island tests: a coordinator (DB + HTTP + NATS host subtree) on the test servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from coordinator.app import build_children, build_runtime
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from tests.conftest import make_settings


@asynccontextmanager
async def running_coordinator(database_url: str, nats_url: str, **overrides: Any) -> AsyncIterator[Runtime]:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "heartbeat_flush_seconds": 0.1,
        "require_host_approval": False,
    }
    values.update(overrides)
    runtime = build_runtime(make_settings(database_url, **values))
    supervisor = Supervisor(build_children(runtime))
    await supervisor.start()
    try:
        yield runtime
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0, step: float = 0.05) -> Any:
    """Poll `check` until it returns a truthy value; fail with the last value after `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {value!r})")
        await asyncio.sleep(step)
