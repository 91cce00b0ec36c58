"""The supervision tree: ordered start, reverse stop, one_for_one restarts, NATS children only with NATS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from coordinator.app import (
    DatabaseChild,
    HttpChild,
    NatsConnectionChild,
    ReadyMarker,
    WorkerChild,
    build_children,
)
from coordinator.runtime import Runtime
from coordinator.supervisor import Child, LoopService, Supervisor
from coordinator.telemetry.child import TelemetryChild
from coordinator.telemetry.collectors import MetricsCollector
from tests.conftest import make_settings


class Recorder(Child):
    def __init__(self, name: str, log: list[str], crashes: int = 0) -> None:
        self.name = name
        self.log = log
        self.crashes_left = crashes
        self.runs = 0

    async def run(self, ready: Callable[[], None]) -> None:
        self.runs += 1
        self.log.append(f"start:{self.name}")
        ready()
        try:
            if self.crashes_left > 0:
                self.crashes_left -= 1
                await asyncio.sleep(0.01)
                raise RuntimeError("boom")
            await asyncio.Event().wait()
        finally:
            self.log.append(f"exit:{self.name}")

    async def drain(self) -> None:
        self.log.append(f"drain:{self.name}")


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    log: list[str] = []
    supervisor = Supervisor([Recorder(n, log) for n in ("a", "b", "c")])
    await supervisor.start()
    assert log == ["start:a", "start:b", "start:c"]
    log.clear()
    await supervisor.stop()
    assert log == ["drain:c", "exit:c", "drain:b", "exit:b", "drain:a", "exit:a"]


async def test_a_crashing_child_is_restarted_without_stopping_its_siblings() -> None:
    log: list[str] = []
    stable_a, flaky, stable_c = Recorder("a", log), Recorder("flaky", log, crashes=3), Recorder("c", log)
    supervisor = Supervisor([stable_a, flaky, stable_c], backoff_initial=0.01, backoff_max=0.05)
    await supervisor.start()
    for _ in range(200):
        if flaky.runs >= 4:
            break
        await asyncio.sleep(0.01)
    assert flaky.runs == 4
    assert supervisor.restarts("flaky") == 3
    assert stable_a.runs == 1 and stable_c.runs == 1
    assert "exit:a" not in log and "exit:c" not in log
    await supervisor.stop()


async def test_a_child_that_fails_before_ready_aborts_start_up() -> None:
    class Broken(Child):
        name = "broken"

        async def run(self, ready: Callable[[], None]) -> None:
            raise RuntimeError("cannot start")

    log: list[str] = []
    supervisor = Supervisor([Recorder("a", log), Broken()])
    with pytest.raises(RuntimeError, match="broken failed to start"):
        await supervisor.start()
    assert log == ["start:a", "drain:a", "exit:a"]


async def test_loop_service_runs_on_wake_not_only_on_interval() -> None:
    calls: list[float] = []

    class Loop(LoopService):
        name = "loop"
        interval = 60.0

        async def run_once(self) -> None:
            calls.append(asyncio.get_running_loop().time())

    async def calls_reach(n: int) -> None:
        while len(calls) < n:
            await asyncio.sleep(0.005)

    loop = Loop()
    supervisor = Supervisor([loop])
    await supervisor.start()
    await asyncio.wait_for(calls_reach(1), 5)  # the first pass, at start
    loop.wake()
    await asyncio.wait_for(calls_reach(2), 5)  # long before the 60 s interval
    await supervisor.stop()
    assert len(calls) == 2 and calls[1] - calls[0] < 30


@pytest.mark.parametrize(
    ("nats_url", "disabled", "expect_nats"),
    [("nats://127.0.0.1:1", False, True), ("nats://127.0.0.1:1", True, False), (None, False, False)],
)
def test_nats_children_are_absent_without_nats(
    database_url: str, nats_url: str | None, disabled: bool, expect_nats: bool
) -> None:
    runtime = Runtime.from_settings(make_settings(database_url, nats_url=nats_url, nats_disabled=disabled))
    children = build_children(runtime, with_worker=True)
    kinds = [type(c) for c in children]
    assert kinds[:3] == [TelemetryChild, DatabaseChild, MetricsCollector]
    assert kinds.index(WorkerChild) < kinds.index(HttpChild)
    assert (NatsConnectionChild in kinds) is expect_nats


async def test_the_full_tree_serves_and_shuts_down_cleanly(database_url: str, nats_url: str) -> None:
    import httpx

    runtime = Runtime.from_settings(make_settings(database_url, nats_url=nats_url))
    supervisor = Supervisor(build_children(runtime, with_worker=True))
    await supervisor.start()
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url) as client:
            ready = (await client.get("/readyz")).json()
        assert ready["checks"] == {"database": "ok", "nats": "ok", "started": "ok"}
        assert runtime.nats is not None and runtime.nats.is_connected
    finally:
        await supervisor.stop()
    assert runtime.nats is None


class Gate(Child):
    """A child that reports ready only when the test opens it (a slow NATS subtree, say)."""

    name = "gate"

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def run(self, ready: Callable[[], None]) -> None:
        await self.open.wait()
        ready()
        await asyncio.Event().wait()


async def test_readyz_waits_for_every_child_of_the_tree(database_url: str) -> None:
    import httpx

    runtime = Runtime.from_settings(make_settings(database_url))
    gate = Gate()
    supervisor = Supervisor([DatabaseChild(runtime), HttpChild(runtime), gate, ReadyMarker(runtime)])
    starting = asyncio.create_task(supervisor.start())
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url) as client:
            for _ in range(100):  # the HTTP server is up while the gate is still closed
                try:
                    early = await client.get("/readyz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert early.status_code == 503 and early.json()["checks"]["started"] == "starting"
            gate.open.set()
            await starting
            assert (await client.get("/readyz")).json()["checks"]["started"] == "ok"
    finally:
        await supervisor.stop()
    assert runtime.components["tree_ready"] is False


class Stubborn(Child):
    """A child whose clean-up never finishes (a stuck connection, say)."""

    name = "stubborn"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self.release.wait()


async def test_a_child_stuck_in_its_clean_up_does_not_hold_the_stop_of_the_tree() -> None:
    stubborn, after = Stubborn(), Gate()
    after.open.set()
    events: list[tuple[str, str]] = []
    supervisor = Supervisor(
        [stubborn, after], stop_timeout=0.2, on_event=lambda kind, name: events.append((kind, name))
    )
    await supervisor.start()
    try:
        await asyncio.wait_for(supervisor.stop(), 5)
        assert ("stopped", "stubborn") in events and ("stopped", "gate") in events
    finally:
        stubborn.release.set()
        await asyncio.sleep(0)
