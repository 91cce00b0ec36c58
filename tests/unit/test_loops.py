"""The loop base (coordinator.loops.LoopService): passes, overruns, errors, wake-ups and graceful stop."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from coordinator.loops import LoopService
from coordinator.supervisor import Supervisor
from coordinator.telemetry import metrics


class Recorder(LoopService):
    """Records its passes; a pass can be made to fail, to take a while, or to wait for a signal."""

    def __init__(self, name: str, interval: float, *, failing: tuple[int, ...] = (), took: float = 0) -> None:
        super().__init__()
        self.name = name
        self.interval = interval
        self.failing = failing
        self.took = took
        self.calls: list[str] = []
        self.passed = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def setup(self) -> None:
        self.calls.append("setup")

    async def run_once(self) -> None:
        number = sum(1 for c in self.calls if c.startswith("pass"))
        self.calls.append(f"pass{number}")
        self.passed.set()
        if self.release is not None:
            await self.release.wait()
        if self.took:
            await asyncio.sleep(self.took)
        if number in self.failing:
            raise RuntimeError(f"pass {number} fails")
        self.calls.append(f"done{number}")

    async def teardown(self) -> None:
        self.calls.append("teardown")


async def until_stopping(loop: LoopService) -> None:
    while not loop._stopping:
        await asyncio.sleep(0.005)


def counted(counter: object, loop: str) -> float:
    value: float = counter.labels(loop=loop)._value.get()  # type: ignore[attr-defined]
    return value


async def test_loops_n_runs_n_passes_then_tears_down() -> None:
    loop = Recorder("unit-n", interval=0)
    await asyncio.wait_for(loop.start(loops=3), 5)
    assert loop.calls == ["setup", "pass0", "done0", "pass1", "done1", "pass2", "done2", "teardown"]
    assert loop.passes == 3 and loop.failures == 0


async def test_a_pass_longer_than_the_interval_is_warned_and_counted() -> None:
    loop = Recorder("unit-overrun", interval=0.01, took=0.05)
    before = counted(metrics.loop_overruns, "unit-overrun")
    with capture_logs() as logs:
        await asyncio.wait_for(loop.start(loops=2), 5)
    assert counted(metrics.loop_overruns, "unit-overrun") - before == 2
    overruns = [e for e in logs if e["event"] == "loop.overrun"]
    assert len(overruns) == 2 and overruns[0]["loop"] == "unit-overrun" and overruns[0]["took"] >= 0.05


async def test_a_quick_pass_is_no_overrun() -> None:
    loop = Recorder("unit-quick", interval=5.0)
    loop.wake()  # the second pass need not wait for the interval
    before = counted(metrics.loop_overruns, "unit-quick")
    await asyncio.wait_for(loop.start(loops=2), 5)
    assert counted(metrics.loop_overruns, "unit-quick") == before


async def test_an_exception_is_logged_and_counted_and_the_loop_goes_on() -> None:
    loop = Recorder("unit-errors", interval=0, failing=(0, 2))
    before = counted(metrics.loop_errors, "unit-errors")
    with capture_logs() as logs:
        await asyncio.wait_for(loop.start(loops=4), 5)
    assert loop.calls == ["setup", "pass0", "pass1", "done1", "pass2", "pass3", "done3", "teardown"]
    assert loop.failures == 2 and counted(metrics.loop_errors, "unit-errors") - before == 2
    assert [e["loop"] for e in logs if e["event"] == "loop.pass_failed"] == ["unit-errors", "unit-errors"]


async def test_after_error_shortens_the_wait_after_a_failed_pass() -> None:
    loop = Recorder("unit-after-error", interval=60.0, failing=(0,))
    loop.after_error = 0.0
    await asyncio.wait_for(loop.start(loops=2), 5)  # would wait 60 s for its second pass otherwise
    assert loop.calls[-3:] == ["pass1", "done1", "teardown"]


async def test_wake_runs_the_next_pass_before_the_interval() -> None:
    loop = Recorder("unit-wake", interval=60.0)
    task = asyncio.create_task(loop.start())
    await asyncio.wait_for(loop.passed.wait(), 5)
    loop.passed.clear()
    loop.wake()
    await asyncio.wait_for(loop.passed.wait(), 5)  # the 60 s interval did not have to pass
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert loop.calls == ["setup", "pass0", "done0", "pass1", "done1", "teardown"]


async def test_stop_lets_the_current_pass_finish_then_tears_down() -> None:
    loop = Recorder("unit-stop", interval=60.0)
    loop.release = asyncio.Event()
    task = asyncio.create_task(loop.start())
    await asyncio.wait_for(loop.passed.wait(), 5)  # a pass is in progress
    loop.stop()
    assert not task.done()
    loop.release.set()
    await asyncio.wait_for(task, 5)
    assert loop.calls == ["setup", "pass0", "done0", "teardown"]


async def test_the_supervisors_drain_stops_the_loop_gracefully() -> None:
    loop = Recorder("unit-drain", interval=60.0)
    loop.release = asyncio.Event()
    supervisor = Supervisor([loop], drain_timeout=5)
    await supervisor.start()
    await asyncio.wait_for(loop.passed.wait(), 5)
    stopping = asyncio.create_task(supervisor.stop())
    await asyncio.wait_for(until_stopping(loop), 5)
    loop.release.set()  # the pass in progress when the drain began completes; it is not cancelled
    await asyncio.wait_for(stopping, 5)
    assert loop.calls == ["setup", "pass0", "done0", "teardown"]


async def test_a_cancelled_loop_still_tears_down() -> None:
    loop = Recorder("unit-cancel", interval=60.0)
    task = asyncio.create_task(loop.start())
    await asyncio.wait_for(loop.passed.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert loop.calls[-1] == "teardown"
