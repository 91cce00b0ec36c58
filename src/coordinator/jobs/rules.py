"""Pure rules of the job lifecycle: the state table, status mappings, placement filters and scores."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from coordinator.billing import exchange_rules as market_rules
from coordinator.hosts import rules as host_rules
from coordinator.hosts.fleet import HostView

QUEUED, ASSIGNED, RUNNING = "queued", "assigned", "running"
SUCCEEDED, FAILED, CANCELLED, TIMEOUT = "succeeded", "failed", "cancelled", "timeout"

STATES = (QUEUED, ASSIGNED, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMEOUT)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMEOUT})
ACTIVE = frozenset({ASSIGNED, RUNNING})

# The allowed moves (domain-rules, Jobs). `queued → failed` is dead-lettering of a job no Island can run
# any more; `assigned → failed` is dead-lettering after the last attempt's lease or start timeout.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({ASSIGNED, CANCELLED, FAILED}),
    ASSIGNED: frozenset({RUNNING, QUEUED, CANCELLED, FAILED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, TIMEOUT, QUEUED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    TIMEOUT: frozenset(),
}

PUBLIC_STATUS = {
    QUEUED: "pending",
    ASSIGNED: "queued",
    RUNNING: "running",
    SUCCEEDED: "completed",
    FAILED: "failed",
    CANCELLED: "cancelled",
    TIMEOUT: "timeout",
}

# What an Island's JobStatus `state` means for us; `completed` is the node-agent alias of `succeeded`.
ISLAND_STATES = {
    "started": RUNNING,
    "streaming": RUNNING,
    "succeeded": SUCCEEDED,
    "completed": SUCCEEDED,
    "failed": FAILED,
    "cancelled": CANCELLED,
}

# Error texts of Island-side failures that are the Island's fault (not the Cargo's or the input's).
ISLAND_FAULT_PREFIXES = (
    "Failed to ensure container image",
    "Failed to download",
    "Failed to publish",
    "Failed to download/cache WASM module",
)
ISLAND_FAULT_MARKERS = ("requires Docker but Docker is not available",)

# Priority ageing: a waiting job gains one priority point per this many seconds, so nothing starves.
AGEING_SECONDS_PER_POINT = 10
PRIORITY_MIN, PRIORITY_MAX = 0, 100


def can_move(from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS.get(from_state, frozenset())


def sources_of(to_state: str) -> tuple[str, ...]:
    """Every state from which `to_state` may be reached: the WHERE clause of a guarded UPDATE."""
    return tuple(s for s in STATES if to_state in TRANSITIONS[s])


def public_status(state: str) -> str:
    return PUBLIC_STATUS.get(state, "pending")


def island_state(reported: str) -> str | None:
    return ISLAND_STATES.get(reported)


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def failure_is_islands_fault(error: str | None) -> bool:
    if not error:
        return False
    return error.startswith(ISLAND_FAULT_PREFIXES) or any(m in error for m in ISLAND_FAULT_MARKERS)


def credits_used(budget: object, charged: object, settled_at: object) -> float:
    """What a job costs its consumer so far: the whole budget (charged at submit) until it is settled,
    then what the settlement kept. The one definition (the API's `usage`, the stream's `done` event;
    `batches.CHILDREN_CREDITS_SQL` sums the same expression in SQL)."""
    kept = budget if settled_at is None else charged
    return float(max(Decimal(0), Decimal(str(kept or 0))))


def effective_priority(priority: int, waited_seconds: float) -> float:
    """Queue order: the job's priority plus one point per `AGEING_SECONDS_PER_POINT` seconds waited."""
    return priority + max(0.0, waited_seconds) / AGEING_SECONDS_PER_POINT


def parse_budget(value: object) -> Decimal | None:
    """A bid given as a JSON number or a decimal string; None when it is not a positive finite amount."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount <= 0 or amount > Decimal("1e12"):
        return None
    return amount


def parse_price(raw: object) -> Decimal | None:
    """An asking price (heartbeat values are decimal strings); None unless a finite amount ≥ 0."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        price = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return price if price.is_finite() and price >= 0 else None


def asking_price(host: HostView, needs: JobNeeds) -> Decimal:
    """The Island's ask for the job's Cargo — the exchange's one asking-price function (posted ask, else
    base price × hardware tier)."""
    return market_rules.asking_price(host, needs)


def clearing_price(host: HostView, needs: JobNeeds, surge: Decimal) -> Decimal:
    """What the consumer pays on success: the chosen Island's ask × surge, capped at the budget."""
    return min(market_rules.clearing_price_for(host, needs, surge), needs.budget)


@dataclass(frozen=True)
class JobNeeds:
    """The hard requirements and preferences of one job, as placement sees them."""

    workload_id: int
    slug: str
    runtime: str
    kind: str = "generic"
    required_ram_mb: int = 0
    required_vram_mb: int = 0
    required_cpu_cores: int = 0
    platforms: tuple[str, ...] = ()
    region: str | None = None
    budget: Decimal = Decimal(0)
    price_per_job: Decimal = Decimal(0)  # the Cargo's base price (fallback asks)
    owner_id: int | None = None
    excluded_host_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Weights:
    """Placement score weights (domain-rules, Placement); each term is normalised to 0–1."""

    warm: float = 0.25
    speed: float = 0.20
    speed_mobile_llm: float = 0.50
    fit: float = 0.15
    headroom: float = 0.10
    rtt: float = 0.10
    karma: float = 0.15
    price: float = 0.05


DEFAULT_WEIGHTS = Weights()
MOBILE_PLATFORMS = frozenset({"ios", "android", "browser"})


@dataclass(frozen=True)
class Placement:
    host_id: uuid.UUID
    score: float
    terms: dict[str, float] = field(default_factory=dict)
    ask: Decimal | None = None

    def record(self, clearing: Decimal) -> dict[str, object]:
        """The JSON recorded on the job so the consumer can see why this Island was chosen."""
        return {
            "host_id": str(self.host_id),
            "score": round(self.score, 4),
            "terms": {k: round(v, 4) for k, v in self.terms.items()},
            "asking_price": None if self.ask is None else float(self.ask),
            "clearing_price": float(clearing),
        }


def capable(host: HostView, needs: JobNeeds) -> bool:
    """The hardware/runtime part of the hard filters: could this Island ever run the job?"""
    if not host_rules.can_run(host.supported_runtimes, needs.runtime):
        return False
    if needs.platforms and host.platform is not None and host.platform not in needs.platforms:
        return False
    if needs.required_ram_mb and host.ram_mb is not None and host.ram_mb < needs.required_ram_mb:
        return False
    if needs.required_vram_mb and (host.gpu_vram_mb or 0) < needs.required_vram_mb:
        return False
    return not (
        needs.required_cpu_cores and host.cpu_cores is not None and host.cpu_cores < needs.required_cpu_cores
    )


def in_region(host: HostView, region: str | None) -> bool:
    if not region:
        return True
    return host.region is not None and (host.region == region or host.region.startswith(region + "-"))


def could_run(host: HostView, needs: JobNeeds) -> bool:
    """The "capable Island" rule: a known Island, not suspended nor excluded from the job, that meets its
    runtime, hardware and region needs — it could take the job some day (approval, liveness, capacity and
    price aside). Submit-time and sweep checks, placement and the lowest ask all start from it."""
    return (
        str(host.id) not in needs.excluded_host_ids
        and host.status != "suspended"
        and capable(host, needs)
        and in_region(host, needs.region)
    )


def eligible(host: HostView, needs: JobNeeds, ask: Decimal | None = None) -> bool:
    """Every hard filter except liveness and capacity, which the fleet view checks (`ask`: the Island's
    `asking_price` for the job, when the caller has it)."""
    if not host.approved or not could_run(host, needs):
        return False
    if (asking_price(host, needs) if ask is None else ask) > needs.budget:
        return False
    # No self-dealing on paid jobs: an owner's job never runs on the owner's own Island.
    return not (needs.budget > 0 and host.owner_id is not None and host.owner_id == needs.owner_id)


def _fit(required: int, available: int | None) -> float:
    """1 when the job uses about half the Island's memory; less when it is too tight or too loose."""
    if not required or not available:
        return 0.5
    ratio = min(1.0, required / available)
    return max(0.0, 1.0 - abs(ratio - 0.5) / 0.5)


def score_terms(host: HostView, needs: JobNeeds, ask: Decimal | None = None) -> dict[str, float]:
    """Each placement term in 0–1 (higher is better); `ask` as in `eligible`."""
    if needs.kind == "chat" and host.estimated_llm_tok_s:
        speed = min(1.0, host.estimated_llm_tok_s / 150.0)
    else:
        speed = min(1.0, (host.cpu_cores or 1) / 32.0)
    capacity = max(1, host.max_concurrent)
    if ask is None:
        ask = asking_price(host, needs)
    price = 1.0 if needs.budget <= 0 else max(0.0, 1.0 - float(ask / needs.budget))
    return {
        "warm": 1.0 if str(needs.workload_id) in host.warm_workload_ids else 0.0,
        "speed": speed,
        "fit": _fit(needs.required_ram_mb, host.ram_mb),
        "headroom": host.free_slots / capacity,
        "rtt": 0.5 if host.rtt_ms is None else 1.0 / (1.0 + max(0.0, host.rtt_ms) / 50.0),
        "karma": 0.0 if host.karma <= 0 else host.karma / (host.karma + 10.0),
        "price": price,
    }


def weighted_score(host: HostView, needs: JobNeeds, terms: dict[str, float], weights: Weights) -> float:
    mobile_llm = needs.kind == "chat" and (host.transport == "websocket" or host.platform in MOBILE_PLATFORMS)
    speed_weight = weights.speed_mobile_llm if mobile_llm else weights.speed
    return (
        weights.warm * terms["warm"]
        + speed_weight * terms["speed"]
        + weights.fit * terms["fit"]
        + weights.headroom * terms["headroom"]
        + weights.rtt * terms["rtt"]
        + weights.karma * terms["karma"]
        + weights.price * terms["price"]
    )


def choose_host(
    candidates: Iterable[HostView], needs: JobNeeds, weights: Weights = DEFAULT_WEIGHTS
) -> Placement | None:
    """The best eligible Island with a free slot; ties go to the one idle the longest. (Each candidate's
    ask is computed once: placement runs per job over every live Island.)"""
    best: tuple[float, float, Placement] | None = None
    for host in candidates:
        if host.free_slots <= 0:
            continue
        ask = asking_price(host, needs)
        if not eligible(host, needs, ask):
            continue
        terms = score_terms(host, needs, ask)
        score = weighted_score(host, needs, terms, weights)
        key = (round(score, 9), -host.idle_since_monotonic)
        if best is None or key > best[:2]:
            best = (key[0], key[1], Placement(host.id, score, terms, ask))
    return None if best is None else best[2]


def unrunnable_reason(needs: JobNeeds) -> str:
    where = f" in region {needs.region}" if needs.region else ""
    return f"No registered Island can run this Cargo (needs {_needs_text(needs)}){where}"


# Why a queued job waits (`placement.reason` on the job), most fundamental first.
UNPLACED_RUNTIME, UNPLACED_REGION, UNPLACED_PRICE, UNPLACED_CAPACITY = (
    "runtime",
    "region",
    "price",
    "capacity",
)


@dataclass(frozen=True)
class Unplaced:
    """Why no Island took a job in a dispatch pass; `lowest_ask` is set when the reason is price."""

    reason: str
    message: str
    lowest_ask: Decimal | None = None

    def record(self, budget: Decimal) -> dict[str, object]:
        """The `placement` JSON of a waiting job (`since` is added when it is first stored)."""
        body: dict[str, object] = {"reason": self.reason, "message": self.message, "budget": float(budget)}
        if self.lowest_ask is not None:
            body["lowest_ask"] = float(self.lowest_ask)
        return body


def unplaced_reason(hosts: Iterable[HostView], needs: JobNeeds) -> Unplaced:
    """Why `choose_host` found no Island among the live ones: runtime (or hardware), region, price, or
    capacity (someone could take it, but every such Island is full)."""
    usable = [
        h
        for h in hosts
        if str(h.id) not in needs.excluded_host_ids
        and h.approved
        and h.status != "suspended"
        and not (needs.budget > 0 and h.owner_id is not None and h.owner_id == needs.owner_id)
    ]
    if not usable:
        return Unplaced(UNPLACED_CAPACITY, "No Island is online to take it")
    runnable = [h for h in usable if capable(h, needs)]
    if not runnable:
        return Unplaced(UNPLACED_RUNTIME, "No Island online can run this Cargo: " + _needs_text(needs))
    nearby = [h for h in runnable if in_region(h, needs.region)]
    if not nearby:
        return Unplaced(UNPLACED_REGION, f"No Island online in region {needs.region} can run this Cargo")
    asks = [asking_price(h, needs) for h in nearby]
    lowest = min(asks)
    if lowest > needs.budget:
        return Unplaced(
            UNPLACED_PRICE,
            f"The budget {needs.budget.normalize():f} is below the lowest ask of the Islands online "
            f"({lowest.normalize():f})",
            lowest,
        )
    return Unplaced(UNPLACED_CAPACITY, "Every Island online that can run this job is busy")


def _needs_text(needs: JobNeeds) -> str:
    parts = [f"runtime {needs.runtime}"]
    if needs.required_ram_mb:
        parts.append(f"{needs.required_ram_mb} MB RAM")
    if needs.required_vram_mb:
        parts.append(f"{needs.required_vram_mb} MB VRAM")
    if needs.required_cpu_cores:
        parts.append(f"{needs.required_cpu_cores} CPU cores")
    return ", ".join(parts)


def lowest_live_ask(hosts: Iterable[HostView], needs: JobNeeds) -> Decimal | None:
    """The cheapest ask for the job among the Islands that could take it (ignoring its budget and their
    free slots); None when none can."""
    asks = [
        asking_price(h, needs)
        for h in hosts
        if h.approved
        and could_run(h, needs)
        and not (h.owner_id is not None and h.owner_id == needs.owner_id)
    ]
    return min(asks) if asks else None
