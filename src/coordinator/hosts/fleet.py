"""The live fleet view: every known Island's latest state, in memory, for placement and dispatch.

Heartbeats update it directly (no database round-trip); a flusher writes it to `hosts` in batches.
The dispatcher reads it to find Islands with capacity; it never trusts an Island to refuse work."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass
class HostView:
    """What placement needs to know about one Island."""

    id: uuid.UUID
    owner_id: int | None = None
    status: str = "offline"  # pending_approval, online, offline, suspended
    approved: bool = False
    region: str | None = None
    platform: str | None = None
    transport: str = "nats"  # nats or websocket
    gpu_model: str | None = None
    gpu_vram_mb: int | None = None
    cpu_cores: int | None = None
    ram_mb: int | None = None
    supported_runtimes: tuple[str, ...] = ("container", "wasm")
    max_concurrent: int = 1
    # Jobs the coordinator has bound to this Island and not yet seen finish (its own count, not the Island's).
    reserved: int = 0
    reported_active: int = 0
    warm_workload_ids: frozenset[str] = frozenset()
    asking_prices: dict[str, Decimal] = field(default_factory=dict)
    estimated_llm_tok_s: float | None = None
    rtt_ms: float | None = None
    karma: int = 0
    last_heartbeat_monotonic: float = 0.0
    idle_since_monotonic: float = 0.0

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent - max(self.reserved, self.reported_active))

    def is_live(self, now: float, timeout: float) -> bool:
        return self.status == "online" and now - self.last_heartbeat_monotonic <= timeout

    def can_take_work(self, now: float, timeout: float) -> bool:
        return self.approved and self.is_live(now, timeout) and self.free_slots > 0


class FleetView:
    """In-memory map host_id → HostView, plus listeners told when capacity appears."""

    def __init__(self, heartbeat_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock
        self._hosts: dict[uuid.UUID, HostView] = {}
        self._capacity_listeners: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._hosts)

    def __iter__(self) -> Iterator[HostView]:
        return iter(list(self._hosts.values()))

    def get(self, host_id: uuid.UUID) -> HostView | None:
        return self._hosts.get(host_id)

    def put(self, view: HostView) -> None:
        self._hosts[view.id] = view

    def remove(self, host_id: uuid.UUID) -> None:
        self._hosts.pop(host_id, None)

    def on_capacity(self, listener: Callable[[], None]) -> None:
        """Register a callback run when an Island comes online or frees a slot (wakes the dispatcher)."""
        self._capacity_listeners.append(listener)

    def notify_capacity(self) -> None:
        for listener in self._capacity_listeners:
            listener()

    def available(self) -> list[HostView]:
        """Islands that may receive a job right now."""
        now = self.clock()
        return [h for h in self._hosts.values() if h.can_take_work(now, self.heartbeat_timeout)]

    def reserve(self, host_id: uuid.UUID) -> bool:
        view = self._hosts.get(host_id)
        if view is None or view.free_slots <= 0:
            return False
        view.reserved += 1
        return True

    def release(self, host_id: uuid.UUID) -> None:
        view = self._hosts.get(host_id)
        if view is not None and view.reserved > 0:
            view.reserved -= 1
            if view.reserved == 0:
                view.idle_since_monotonic = self.clock()
            self.notify_capacity()
