"""The compute exchange: budget resolution, asking prices, surge, market rates, snapshots and saved bids."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing import exchange_rules as rules
from coordinator.config import Settings
from coordinator.errors import Forbidden, NotFound, ValidationFailed
from coordinator.hosts.rules import can_run
from coordinator.workloads.models import Workload

V = TypeVar("V")

HISTORY_PERIODS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@dataclass(frozen=True)
class MarketSupplyHost:
    """An online Island as pricing sees it (satisfies `rules.PricedHost`)."""

    id: uuid.UUID
    gpu_model: str | None
    gpu_vram_mb: int | None
    asking_prices: Mapping[str, Any]
    supported_runtimes: tuple[str, ...]
    free_slots: int


class TtlCache(Generic[V]):
    """Values recomputed at most once per `ttl` seconds per key (clock injectable for tests): the surge
    counts (30 s, the rule) and each Cargo's market rate (a moving average; seconds old is current)."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._values: dict[Hashable, tuple[float, V]] = {}

    async def get(self, compute: Callable[[], Awaitable[V]], key: Hashable = None) -> V:
        now = self.clock()
        hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = await compute()
        self._values[key] = (now, value)
        return value

    def clear(self) -> None:
        """Forget every value: the next `get` of each key computes again."""
        self._values.clear()


# Step two of budget resolution: the user's saved bid for this Cargo (also in `jobs.repository.SUBMIT_SQL`).
SAVED_BID = "SELECT bid FROM bid_preferences WHERE user_id = :user_id AND workload_id = :workload_id"
SAVED_BID_SQL = text(SAVED_BID)

# Step three: the average clearing price of the Cargo's recently succeeded jobs.
MARKET_RATE_SQL = text(
    """
    SELECT AVG(clearing_price) FROM jobs
    WHERE workload_id = :workload_id AND state = 'succeeded' AND clearing_price IS NOT NULL
      AND completed_at > now() - make_interval(mins => :minutes)
    """
)


async def market_rate(session: AsyncSession, workload_id: int, window_minutes: int = 60) -> Decimal | None:
    value = (
        await session.execute(MARKET_RATE_SQL, {"workload_id": workload_id, "minutes": window_minutes})
    ).scalar()
    return None if value is None else Decimal(value)


async def resolve_budget(
    session: AsyncSession,
    user_id: int,
    workload: Workload,
    explicit: Decimal | None,
    *,
    markup: Decimal = Decimal("1.05"),
    window_minutes: int = 60,
    rates: TtlCache[Decimal | None] | None = None,
) -> Decimal:
    """The job's budget: its own → the user's saved bid → recent market rate × markup → the base price."""
    if explicit is not None:
        if not explicit.is_finite() or explicit <= 0:
            raise ValidationFailed("Invalid budget", {"budget": ["must be a positive number"]})
        return rules.money(explicit)
    saved = (await session.execute(SAVED_BID_SQL, {"user_id": user_id, "workload_id": workload.id})).scalar()
    if saved is not None:
        return Decimal(saved)
    return await default_budget(
        session,
        workload.id,
        Decimal(workload.price_per_job),
        markup=markup,
        window_minutes=window_minutes,
        rates=rates,
    )


async def default_budget(
    session: AsyncSession,
    workload_id: int,
    base_price: Decimal,
    *,
    markup: Decimal = Decimal("1.05"),
    window_minutes: int = 60,
    rates: TtlCache[Decimal | None] | None = None,
) -> Decimal:
    """Steps three and four of `resolve_budget`: the recent market rate × markup, else the base price."""

    def compute() -> Awaitable[Decimal | None]:
        return market_rate(session, workload_id, window_minutes)

    rate = await (compute() if rates is None else rates.get(compute, workload_id))
    if rate is not None and rate > 0:
        return rules.market_budget(rate, markup)
    return base_price


# Online, approved, not suspended Islands with what pricing and capacity need.
SUPPLY_SQL = text(
    """
    SELECT id, gpu_model, gpu_vram_mb, asking_prices, supported_runtimes,
           GREATEST(max_concurrent - active_jobs, 0)
    FROM hosts
    WHERE status = 'online' AND approved AND suspended_at IS NULL
    """
)


async def online_supply(session: AsyncSession) -> list[MarketSupplyHost]:
    rows = (await session.execute(SUPPLY_SQL)).all()
    return [MarketSupplyHost(r[0], r[1], r[2], r[3] or {}, tuple(r[4] or ()), int(r[5])) for r in rows]


def _serves(host: MarketSupplyHost, workload: Workload) -> bool:
    return can_run(host.supported_runtimes, workload.runtime)


# Jobs waiting for an Island (the demand side of surge).
QUEUED_JOBS_SQL = text("SELECT count(*) FROM jobs WHERE state = 'queued'")


async def surge_counts(session: AsyncSession) -> tuple[int, int]:
    """What the surge factor is computed from: queued jobs, and the free slots of online Islands."""
    queued = int((await session.execute(QUEUED_JOBS_SQL)).scalar_one())
    return queued, sum(h.free_slots for h in await online_supply(session))


async def compute_surge(
    session: AsyncSession, *, ratio: Decimal = Decimal(2), multiplier: Decimal = Decimal("1.25")
) -> Decimal:
    """The surge factor now: queued jobs against the free slots of online Islands."""
    queued, capacity = await surge_counts(session)
    return rules.surge_factor(queued, capacity, ratio=ratio, multiplier=multiplier)


class Surge:
    """The surge factor with the settings' demand ratio and multiplier: the one definition the dispatcher
    (clearing prices, from counts cached `ttl` seconds) and the market snapshot worker (uncached) both
    use."""

    def __init__(
        self, *, ratio: Decimal, multiplier: Decimal, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ratio = ratio
        self.multiplier = multiplier
        self.cache = TtlCache[tuple[int, int]](ttl=ttl, clock=clock)  # (queued jobs, free slots)

    @classmethod
    def from_settings(cls, settings: Settings) -> Surge:
        return cls(
            ratio=Decimal(str(settings.surge_demand_ratio)),
            multiplier=Decimal(str(settings.surge_multiplier)),
            ttl=settings.surge_cache_seconds,
        )

    async def compute(self, session: AsyncSession) -> Decimal:
        """The factor now, from the database."""
        return await compute_surge(session, ratio=self.ratio, multiplier=self.multiplier)

    async def current(self, session: AsyncSession, entering: int = 0) -> Decimal:
        """The factor, from counts read at most once per `ttl` seconds; `entering`: jobs not in the
        counts that are demand all the same (a submit assigning its own job before it is stored)."""
        queued, capacity = await self.cache.get(lambda: surge_counts(session))
        return rules.surge_factor(queued + entering, capacity, ratio=self.ratio, multiplier=self.multiplier)


async def _workloads(session: AsyncSession, slug: str | None = None) -> list[Workload]:
    query = select(Workload).where(Workload.is_enabled.is_(True)).order_by(Workload.slug)
    if slug is not None:
        query = query.where(Workload.slug == slug)
    return list((await session.execute(query)).scalars())


async def _workload(session: AsyncSession, slug: str) -> Workload:
    found = (await session.execute(select(Workload).where(Workload.slug == slug))).scalar_one_or_none()
    if found is None:
        raise NotFound(f"Cargo '{slug}' not found")
    return found


def _rate(workload: Workload, supply: list[MarketSupplyHost], at: datetime) -> dict[str, Any]:
    asks = [rules.asking_price(h, workload) for h in supply if _serves(h, workload)]
    avg, low, high = rules.price_stats(asks)
    return {
        "workload_slug": workload.slug,
        "avg_price": _num(avg),
        "min_price": _num(low),
        "max_price": _num(high),
        "num_hosts": len(asks),
        "base_price": float(workload.price_per_job),
        "timestamp": at.isoformat(),
    }


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


async def current_rates(session: AsyncSession, slug: str | None = None) -> list[dict[str, Any]]:
    """MarketRate objects (client-api §3.8) from the asks of the Islands online now."""
    if slug is not None:
        await _workload(session, slug)
    supply = await online_supply(session)
    now = datetime.now(UTC)
    return [_rate(w, supply, now) for w in await _workloads(session, slug)]


# Demand and clearing of the last snapshot interval, per Cargo.
INTERVAL_ACTIVITY_SQL = text(
    """
    SELECT w.id,
           (SELECT count(*) FROM jobs j WHERE j.workload_id = w.id AND j.state = 'queued'),
           (SELECT count(*) FROM jobs j WHERE j.workload_id = w.id AND j.state = 'succeeded'
              AND j.completed_at > now() - make_interval(secs => :seconds)),
           (SELECT AVG(clearing_price) FROM jobs j WHERE j.workload_id = w.id AND j.state = 'succeeded'
              AND j.clearing_price IS NOT NULL AND j.completed_at > now() - make_interval(secs => :seconds))
    FROM workloads w WHERE w.is_enabled
    """
)

INSERT_SNAPSHOT_SQL = text(
    """
    INSERT INTO market_snapshots
        (workload_id, avg_ask, min_ask, max_ask, clearing_price, supply, demand, jobs_cleared)
    VALUES (:workload_id, :avg, :min, :max, :clearing, :supply, :demand, :cleared)
    """
)


async def take_snapshots(
    session: AsyncSession, *, interval_seconds: int = 300, surge: Decimal = Decimal(1)
) -> int:
    """One market snapshot per enabled Cargo (the 5-minute periodic task). Returns how many were written.

    The clearing price is the average of the interval's cleared jobs; with none, the cheapest ask × surge
    (what the next job would clear at)."""
    supply = await online_supply(session)
    activity = {
        r[0]: (int(r[1]), int(r[2]), r[3])
        for r in (await session.execute(INTERVAL_ACTIVITY_SQL, {"seconds": interval_seconds})).all()
    }
    written = 0
    for workload in await _workloads(session):
        asks = [rules.asking_price(h, workload) for h in supply if _serves(h, workload)]
        avg, low, high = rules.price_stats(asks)
        demand, cleared, avg_clearing = activity.get(workload.id, (0, 0, None))
        clearing = Decimal(avg_clearing) if avg_clearing is not None else None
        if clearing is None and low is not None:
            clearing = rules.clearing_price(low, surge)
        params = {
            "workload_id": workload.id,
            "avg": avg,
            "min": low,
            "max": high,
            "clearing": clearing,
            "supply": len(asks),
            "demand": demand,
            "cleared": cleared,
        }
        await session.execute(INSERT_SNAPSHOT_SQL, params)
        written += 1
    return written


# Snapshots of one Cargo since a moment, oldest first.
HISTORY_SQL = text(
    """
    SELECT avg_ask, min_ask, max_ask, clearing_price, supply, demand, jobs_cleared, taken_at
    FROM market_snapshots WHERE workload_id = :workload_id AND taken_at >= :since
    ORDER BY taken_at LIMIT 10000
    """
)


async def history(session: AsyncSession, slug: str, period: str) -> list[dict[str, Any]]:
    if period not in HISTORY_PERIODS:
        raise ValidationFailed("Invalid period", {"period": [f"must be one of {', '.join(HISTORY_PERIODS)}"]})
    workload = await _workload(session, slug)
    since = datetime.now(UTC) - HISTORY_PERIODS[period]
    rows = (await session.execute(HISTORY_SQL, {"workload_id": workload.id, "since": since})).all()
    return [
        {
            "workload_slug": slug,
            "avg_price": _num(r[0]),
            "min_price": _num(r[1]),
            "max_price": _num(r[2]),
            "clearing_price": _num(r[3]),
            "num_hosts": r[4],
            "demand": r[5],
            "jobs_cleared": r[6],
            "timestamp": r[7].isoformat(),
        }
        for r in rows
    ]


# Saves (or replaces) a user's bid for one Cargo.
UPSERT_BID_SQL = text(
    """
    INSERT INTO bid_preferences (user_id, workload_id, bid) VALUES (:user_id, :workload_id, :bid)
    ON CONFLICT (user_id, workload_id) DO UPDATE SET bid = EXCLUDED.bid, updated_at = now()
    RETURNING updated_at
    """
)


async def save_bid(session: AsyncSession, user_id: int, slug: str, bid: Decimal) -> dict[str, Any]:
    price = rules.parse_price(bid)
    if price is None or price <= 0:
        raise ValidationFailed("Invalid bid", {"bid": ["must be a positive number"]})
    workload = (await session.execute(select(Workload).where(Workload.slug == slug))).scalar_one_or_none()
    if workload is None:
        raise ValidationFailed("Unknown Cargo", {"workload": ["unknown Cargo"]})
    params = {"user_id": user_id, "workload_id": workload.id, "bid": price}
    updated_at = (await session.execute(UPSERT_BID_SQL, params)).scalar_one()
    return {"workload": slug, "bid": float(price), "updated_at": updated_at.isoformat()}


async def list_bids(session: AsyncSession, user_id: int) -> list[dict[str, Any]]:
    rows = (
        await session.execute(
            text(
                "SELECT w.slug, b.bid, b.updated_at FROM bid_preferences b "
                "JOIN workloads w ON w.id = b.workload_id WHERE b.user_id = :u ORDER BY w.slug"
            ),
            {"u": user_id},
        )
    ).all()
    return [{"workload": r[0], "bid": float(r[1]), "updated_at": r[2].isoformat()} for r in rows]


# The Island's row, locked while its owner's asks are merged into it (and its owner read).
LOCK_ISLAND_OWNER_SQL = text("SELECT owner_id FROM hosts WHERE id = :h FOR NO KEY UPDATE")


async def set_asking_prices(
    session: AsyncSession, user_id: int, host_id: uuid.UUID, prices: Mapping[str, Any]
) -> dict[str, str]:
    """An owner posts an Island's per-Cargo asks (merged into the existing ones; `_default` allowed).

    Stored as strings, like heartbeats send them. Returns the Island's whole ask map."""
    owner = (await session.execute(LOCK_ISLAND_OWNER_SQL, {"h": host_id})).first()
    if owner is None:
        raise NotFound("Island not found")
    if owner[0] != user_id:
        raise Forbidden("Only the Island's owner can set its asking prices")
    errors: dict[str, list[str]] = {}
    parsed: dict[str, str] = {}
    slugs = set((await session.execute(text("SELECT slug FROM workloads"))).scalars())
    for key, value in prices.items():
        price = rules.parse_price(value)
        if key != rules.DEFAULT_ASK_KEY and key not in slugs:
            errors.setdefault(f"prices.{key}", []).append("unknown Cargo")
        elif price is None:
            errors.setdefault(f"prices.{key}", []).append("must be a non-negative number")
        else:
            parsed[key] = format(price.normalize(), "f")
    if errors or not parsed:
        raise ValidationFailed("Invalid asking prices", errors or {"prices": ["must not be empty"]})
    row = await session.execute(
        text(
            "UPDATE hosts SET asking_prices = asking_prices || CAST(:p AS jsonb), updated_at = now() "
            "WHERE id = :h RETURNING asking_prices"
        ),
        {"p": json.dumps(parsed), "h": host_id},
    )
    result: dict[str, str] = row.scalar_one()
    return result
