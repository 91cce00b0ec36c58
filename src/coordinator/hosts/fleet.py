"""The live fleet view: every known Island's latest state, in memory, for placement and dispatch.

Heartbeats update it directly (no database round-trip); a flusher writes it to `hosts` in batches.
The dispatcher reads it to find Islands with capacity; it never trusts an Island to refuse work."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordinator.protocol.messages import Heartbeat


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
    # What the last heartbeat listed; none until one arrives (`protocol.runtimes`).
    supported_runtimes: tuple[str, ...] = ()
    max_concurrent: int = 1
    # Jobs the coordinator has bound to this Island and not yet seen finish (its own count, not the Island's).
    reserved: int = 0
    # The Island's own count of running jobs: its last heartbeat's, less the jobs that ended since.
    reported_active: int = 0
    # Jobs that ended on this Island since its last heartbeat arrived: that heartbeat may have been built
    # before they ended (status and heartbeat travel on different subjects), so it must not re-fill them.
    released_since_beat: int = 0
    warm_workload_ids: frozenset[str] = frozenset()
    asking_prices: dict[str, Decimal] = field(default_factory=dict)
    estimated_llm_tok_s: float | None = None
    rtt_ms: float | None = None
    karma: int = 0
    last_heartbeat_monotonic: float = 0.0
    idle_since_monotonic: float = 0.0
    agent_version: str | None = None
    gpu_bandwidth_gb_s: float | None = None
    # A phone or browser Island's own heartbeat says it takes no new work (battery, heat, network).
    self_gated: bool = False

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent - max(self.reserved, self.reported_active))

    def is_live(self, now: float, timeout: float) -> bool:
        return self.status == "online" and now - self.last_heartbeat_monotonic <= timeout

    def can_take_work(self, now: float, timeout: float) -> bool:
        return self.approved and not self.self_gated and self.is_live(now, timeout) and self.free_slots > 0

    def asking_price(self, workload_slug: str) -> Decimal | None:
        """The Island's ask for a Cargo: its per-slug price, else its `_default`, else None."""
        return self.asking_prices.get(workload_slug, self.asking_prices.get("_default"))


def parse_asking_prices(raw: dict[str, str] | None) -> dict[str, Decimal]:
    """Heartbeat asks are decimal strings; a value that is not a non-negative number is ignored."""
    prices: dict[str, Decimal] = {}
    for slug, value in (raw or {}).items():
        try:
            price = Decimal(value)
        except (InvalidOperation, ValueError):
            continue
        if price.is_finite() and price >= 0:
            prices[slug] = price
    return prices


def view_of(row: Any, *, last_heartbeat: float = 0.0) -> HostView:
    """The one HostView builder: from a `Host` or any row with its columns (the dispatcher's recently
    beating Islands, the submit-time check). `last_heartbeat` is on the fleet's monotonic clock."""
    return HostView(
        id=row.id,
        owner_id=row.owner_id,
        status=row.status,
        approved=bool(row.approved),
        region=row.region,
        platform=row.platform,
        transport=row.transport or "nats",
        gpu_model=row.gpu_model,
        gpu_vram_mb=row.gpu_vram_mb,
        cpu_cores=row.cpu_cores,
        ram_mb=row.ram_mb,
        supported_runtimes=tuple(row.supported_runtimes or ()),
        max_concurrent=max(1, int(row.max_concurrent or 1)),
        reported_active=int(row.active_jobs or 0),
        warm_workload_ids=frozenset(row.warm_workload_ids or ()),
        asking_prices=parse_asking_prices({k: str(v) for k, v in (row.asking_prices or {}).items()}),
        rtt_ms=row.rtt_ms,
        karma=int(row.karma or 0),
        agent_version=getattr(row, "agent_version", None),
        last_heartbeat_monotonic=last_heartbeat,
    )


def status_after_heartbeat(status: str, approved: bool) -> str:
    """A beating Island is online, unless an admin suspended it or it still awaits approval."""
    if status == "suspended":
        return "suspended"
    return "online" if approved else "pending_approval"


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

    def apply_heartbeat(self, view: HostView, beat: Heartbeat) -> None:
        """Fold one heartbeat into the view; wakes the dispatcher when the Island gains capacity."""
        before = view.free_slots if view.is_live(self.clock(), self.heartbeat_timeout) else 0
        perf = beat.performance_estimates
        view.status = status_after_heartbeat(view.status, view.approved)
        # A terminal status is newer than any heartbeat that arrived before it, and possibly newer than
        # this one: the jobs that ended since the previous heartbeat are not counted again (the
        # coordinator's own count, `reserved`, still bounds the load if this one was built afterwards).
        view.reported_active = max(0, beat.active_jobs - view.released_since_beat)
        view.released_since_beat = 0
        view.max_concurrent = max(1, perf.max_concurrent_containers)
        view.supported_runtimes = tuple(perf.supported_runtimes)
        view.warm_workload_ids = frozenset(beat.cache.warm_workload_ids)
        view.asking_prices = parse_asking_prices(beat.asking_prices)
        view.estimated_llm_tok_s = perf.estimated_llm_tok_s
        view.gpu_bandwidth_gb_s = perf.gpu_bandwidth_gb_s
        if perf.nats_rtt_ms is not None:
            view.rtt_ms = perf.nats_rtt_ms
        view.agent_version = beat.agent_version
        view.last_heartbeat_monotonic = now = self.clock()
        if view.idle_since_monotonic == 0.0:
            view.idle_since_monotonic = now
        if view.can_take_work(now, self.heartbeat_timeout) and view.free_slots > before:
            self.notify_capacity()

    def apply_decision(self, host_id: uuid.UUID, status: str, approved: bool, owner_id: int | None) -> None:
        """Carry an operator's or owner's decision (approve, suspend, resume, pair) into the view; a live,
        approved Island becomes available at once."""
        view = self._hosts.get(host_id)
        if view is None:
            return
        view.approved = approved
        view.owner_id = owner_id
        recent = (
            view.last_heartbeat_monotonic > 0
            and self.clock() - view.last_heartbeat_monotonic <= self.heartbeat_timeout
        )
        if status in ("suspended", "pending_approval"):
            view.status = status
        elif recent and approved:
            if view.status != "online":
                view.status = "online"
                self.notify_capacity()
        else:
            view.status = "offline"

    def expire_silent(self) -> list[uuid.UUID]:
        """Mark online Islands silent for longer than the timeout offline (in memory); returns their ids."""
        now = self.clock()
        expired = []
        for view in self._hosts.values():
            if view.status == "online" and now - view.last_heartbeat_monotonic > self.heartbeat_timeout:
                view.status = "offline"
                expired.append(view.id)
        return expired

    def candidates(self) -> list[HostView]:
        """The Islands placement considers now: approved, live (online, beating) and not self-gated. Their
        free slots are counted by the dispatcher under the hosts' row locks (`count_reserved`)."""
        now = self.clock()
        return [
            h
            for h in self._hosts.values()
            if h.approved and not h.self_gated and h.is_live(now, self.heartbeat_timeout)
        ]

    def available(self) -> list[HostView]:
        """Islands that may receive a job right now (candidates with a free slot)."""
        return [h for h in self.candidates() if h.free_slots > 0]

    @staticmethod
    def count_reserved(hosts: list[HostView], active: dict[uuid.UUID, int]) -> None:
        """Set each Island's reserved slots to the coordinator's count of its unfinished jobs."""
        for host in hosts:
            host.reserved = active.get(host.id, 0)

    def reserve(self, host_id: uuid.UUID) -> bool:
        """Take one slot of an Island for a job being assigned; False when it has none free."""
        view = self._hosts.get(host_id)
        if view is None or view.free_slots <= 0:
            return False
        view.reserved += 1
        return True

    def unreserve(self, host_id: uuid.UUID) -> None:
        """A slot `reserve` took for an assignment that was not made."""
        view = self._hosts.get(host_id)
        if view is not None and view.reserved > 0:
            view.reserved -= 1

    def release(self, host_id: uuid.UUID) -> None:
        """A job left this Island (terminal status, requeue, undone assignment): its slot is free now, not
        at the next heartbeat."""
        view = self._hosts.get(host_id)
        if view is None:
            return
        view.reported_active = max(0, view.reported_active - 1)
        view.released_since_beat += 1
        if view.reserved > 0:
            view.reserved -= 1
            if view.reserved == 0:
                view.idle_since_monotonic = self.clock()
        self.notify_capacity()
