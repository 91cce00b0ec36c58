"""The one base of the process's background loops (dispatcher, flushers, sweeps, pub/sub bridge...).

Like Prefect's `LoopService`: a subclass writes `run_once()`; the base runs it every `interval` seconds
(or at once when `wake()` is called), warns when a pass overruns its interval, logs and counts a pass that
raises and keeps going, and stops gracefully: `stop()` (or the supervisor's drain) lets the current pass
finish, then `teardown()` runs. `start(loops=N)` runs N passes and returns, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import abstractmethod
from collections.abc import Callable

import structlog

from coordinator.supervisor import Child
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)


class LoopService(Child):
    """A supervised loop: `run_once` every `interval` seconds or when woken."""

    interval: float = 1.0
    # After a pass that raised, the next one comes this soon (None: after the usual interval).
    after_error: float | None = None

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._running = False
        self.passes = 0  # completed passes, failed ones included
        self.failures = 0

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current pass (its teardown still runs)."""
        self._stopping = True
        self._wake.set()

    async def setup(self) -> None:
        """Runs once before the first pass (and again after a restart by the supervisor)."""

    async def teardown(self) -> None:
        """Runs once after the last pass, however the loop ended (stop, cancellation)."""

    @abstractmethod
    async def run_once(self) -> None: ...

    async def run(self, ready: Callable[[], None]) -> None:
        await self.start(ready=ready)

    async def start(self, loops: int | None = None, ready: Callable[[], None] | None = None) -> None:
        """Set up, then run passes until stopped (or `loops` passes have run), then tear down."""
        self._stopping = False
        self._stopped.clear()
        self._running = True
        try:
            await self.setup()
            if ready is not None:
                ready()
            done = 0
            while not self._stopping:
                failed = not await self._pass()
                done += 1
                if loops is not None and done >= loops:
                    break
                if self._stopping:
                    break
                await self._sleep(
                    self.after_error if failed and self.after_error is not None else self.interval
                )
        finally:
            self._running = False
            try:
                await self.teardown()
            finally:
                self._stopped.set()

    async def _pass(self) -> bool:
        """One pass; False if it raised (logged and counted: the loop goes on)."""
        started = time.monotonic()
        ok = True
        try:
            await self.run_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            ok = False
            self.failures += 1
            metrics.loop_errors.labels(loop=self.name).inc()
            log.exception("loop.pass_failed", loop=self.name)
        self.passes += 1
        took = time.monotonic() - started
        if self.interval > 0 and took > self.interval:
            metrics.loop_overruns.labels(loop=self.name).inc()
            log.warning("loop.overrun", loop=self.name, took=round(took, 3), interval=self.interval)
        return ok

    async def _sleep(self, seconds: float) -> None:
        # (`asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` drops a cancellation that arrives as
        # the event is set, and the loop would go on after the supervisor cancelled it.)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def drain(self) -> None:
        """The supervisor's graceful stop: let the current pass finish (the task is cancelled after)."""
        if not self._running:
            return
        self.stop()
        await self._stopped.wait()
