"""A small OTP-style supervisor: ordered start, reverse stop, one_for_one restarts with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)


class Child(ABC):
    """A supervised service. `run` calls `ready()` once it serves, then runs until cancelled."""

    name: str = "child"
    # How long start-up may take before the supervisor gives up on the whole tree.
    start_timeout: float = 30.0

    @abstractmethod
    async def run(self, ready: Callable[[], None]) -> None: ...

    async def drain(self) -> None:  # noqa: B027 - optional hook
        """Graceful stop before cancellation: stop accepting, flush, ack in-flight work. Optional."""


@dataclass
class _Slot:
    child: Child
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    last_error: BaseException | None = None


class Supervisor:
    def __init__(
        self,
        children: Sequence[Child],
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        drain_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self._slots = [_Slot(child) for child in children]
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.drain_timeout = drain_timeout
        self.stop_timeout = stop_timeout
        self._on_event = on_event
        self._stopping = False

    @property
    def names(self) -> list[str]:
        return [s.child.name for s in self._slots]

    def restarts(self, name: str) -> int:
        return next(s.restarts for s in self._slots if s.child.name == name)

    def _event(self, kind: str, name: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, name)

    async def start(self) -> None:
        """Start every child in order, each after the previous one reported ready."""
        for slot in self._slots:
            slot.task = asyncio.create_task(self._supervise(slot), name=f"supervised:{slot.child.name}")
            ready = asyncio.create_task(slot.ready.wait())
            done, _ = await asyncio.wait(
                {ready, slot.task}, timeout=slot.child.start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                ready.cancel()
                await self.stop()
                raise RuntimeError(f"{slot.child.name} failed to start: {slot.last_error!r}")
            self._event("started", slot.child.name)
            log.debug("supervisor.started", child=slot.child.name)

    async def _supervise(self, slot: _Slot) -> None:
        delay = self.backoff_initial
        while not self._stopping:
            started_at = time.monotonic()
            try:
                await slot.child.run(slot.ready.set)
                if self._stopping:
                    return
                raise RuntimeError("child returned without being stopped")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                slot.last_error = exc
                if self._stopping:
                    return
                if not slot.ready.is_set():
                    # Failing before ever becoming ready aborts start-up instead of looping silently.
                    log.error("supervisor.child_failed_to_start", child=slot.child.name, error=repr(exc))
                    return
                slot.restarts += 1
                if time.monotonic() - started_at > 30:
                    delay = self.backoff_initial
                log.error("supervisor.child_crashed", child=slot.child.name, error=repr(exc), retry_in=delay)
                self._event("crashed", slot.child.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                self._event("restarting", slot.child.name)

    async def stop(self) -> None:
        """Drain and stop the children in reverse start order."""
        self._stopping = True
        for slot in reversed(self._slots):
            if slot.task is None:
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.child.drain(), self.drain_timeout)
            slot.task.cancel()
            # A child stuck in its own clean-up must not keep the rest of the tree (and the process) up.
            done, _ = await asyncio.wait({slot.task}, timeout=self.stop_timeout)
            if not done:
                log.error("supervisor.child_did_not_stop", child=slot.child.name, waited=self.stop_timeout)
            else:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    slot.task.result()
            slot.task = None
            self._event("stopped", slot.child.name)
            log.debug("supervisor.stopped", child=slot.child.name)
