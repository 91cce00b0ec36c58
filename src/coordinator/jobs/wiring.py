"""The jobs context's runtime accessors (fleet, bus, caches, the after-commit hook registry).

They sit apart from `service.py` so that the lifecycle engine and its hooks can reach the process's
components without importing the service that calls them (no import circle)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.billing import exchange as market
from coordinator.hosts.fleet import FleetView
from coordinator.jobs.events import BUS_COMPONENT, JobBus, JobRef
from coordinator.jobs.hooks import HookRegistry, TransitionResult, registry_of
from coordinator.runtime import Runtime
from coordinator.workloads.models import Workload

log = structlog.get_logger(__name__)

FLEET_COMPONENT = "fleet"
SURGE_COMPONENT = "surge"
MARKET_RATES_COMPONENT = "market_rates"


def fleet_of(runtime: Runtime) -> FleetView | None:
    fleet = runtime.components.get(FLEET_COMPONENT)
    return fleet if isinstance(fleet, FleetView) else None


async def current_surge(runtime: Runtime, session: AsyncSession) -> Decimal:
    """The exchange's surge factor, cached 30 seconds (the rule) in the runtime."""
    cache = runtime.components.get(SURGE_COMPONENT)
    if not isinstance(cache, market.TtlCache):
        cache = runtime.components[SURGE_COMPONENT] = market.TtlCache[Decimal](ttl=30)
    return await cache.get(lambda: market.compute_surge(session))


def market_rates(runtime: Runtime) -> market.TtlCache[Decimal | None]:
    """Each Cargo's market rate (an hour's average clearing price), recomputed at most every 10 s rather
    than on every submission."""
    cache = runtime.components.get(MARKET_RATES_COMPONENT)
    if not isinstance(cache, market.TtlCache):
        cache = runtime.components[MARKET_RATES_COMPONENT] = market.TtlCache[Decimal | None](ttl=10)
    return cache


def bus_of(runtime: Runtime) -> JobBus | None:
    bus: JobBus | None = runtime.components.get(BUS_COMPONENT)
    return bus


def hooks(runtime: Runtime) -> HookRegistry:
    """The runtime's registry of extension hooks (batch roll-up, intake cache…); the built-in hooks of
    each move are declared in `jobs/moves.py` and run by `jobs/lifecycle.py` before these."""
    return registry_of(runtime.components)


async def job_ref(runtime: Runtime, result: TransitionResult) -> JobRef:
    """A JobRef for a transition, with the Cargo's kind and runtime from a small per-process cache."""
    kind, runtime_name = await workload_meta(runtime, result.workload_id)
    return JobRef(
        job_id=result.job_id,
        user_id=result.user_id,
        workload_id=result.workload_id,
        workload_kind=kind,
        runtime=runtime_name,
        host_id=result.host_id or result.released_host_id,
        created_at=result.created_at,
        stream_owner=result.stream_owner,
    )


async def workload_meta(runtime: Runtime, workload_id: int) -> tuple[str, str]:
    cache: dict[int, tuple[str, str]] = runtime.components.setdefault("workload_meta", {})
    if workload_id not in cache:
        async with runtime.db.read() as session:
            row = (
                await session.execute(
                    select(Workload.kind, Workload.runtime).where(Workload.id == workload_id)
                )
            ).one()
        cache[workload_id] = (row[0], row[1])
    return cache[workload_id]


async def best_effort(awaitable: Any, what: str, job_id: uuid.UUID) -> None:
    """A best-effort message after commit: the durable state is already right if it fails."""
    try:
        await awaitable
    except Exception as exc:
        log.warning("jobs.bus_failed", what=what, job_id=str(job_id), error=repr(exc))
