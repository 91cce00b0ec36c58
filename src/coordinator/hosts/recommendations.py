"""Preload hints for Islands: which Cargos have queued demand (GET /api/v1/island/recommendations)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.protocol.messages import PreloadRecommendation

# Queued demand per Cargo, busiest first (uses the partial queue index on jobs).
QUEUED_DEMAND_SQL = text(
    """
    SELECT w.slug, w.runtime, w.model_url, w.model_hash, w.price_per_job, count(*) AS queued
    FROM jobs j JOIN workloads w ON w.id = j.workload_id
    WHERE j.state = 'queued' AND w.is_enabled AND w.suspended_at IS NULL
    GROUP BY w.id
    ORDER BY queued DESC, w.slug
    LIMIT :limit
    """
)


def priority_for(queued: int) -> str:
    return "high" if queued >= 10 else "medium" if queued >= 3 else "low"


def recommendation(
    slug: str, runtime: str, model_url: str | None, model_hash: str | None, price: Decimal, queued: int
) -> PreloadRecommendation:
    return PreloadRecommendation(
        workload_slug=slug,
        runtime_type=runtime,
        model_url=model_url,
        # The Island accepts only exact `sha256:<lowercase hex>` hashes; anything else is left out.
        model_hash=model_hash if model_hash and model_hash.startswith("sha256:") else None,
        estimated_earnings_per_job=str(price),
        queued_demand=queued,
        demand_score=min(100, queued * 10),
        priority=priority_for(queued),
    )


async def queued_demand(
    session: AsyncSession, supported_runtimes: tuple[str, ...] | None, limit: int = 10
) -> list[PreloadRecommendation]:
    rows = await session.execute(QUEUED_DEMAND_SQL, {"limit": limit})
    return [
        recommendation(r.slug, r.runtime, r.model_url, r.model_hash, r.price_per_job, r.queued)
        for r in rows
        if supported_runtimes is None or r.runtime in supported_runtimes
    ]
