"""The public side of the Cargo registry: the catalogue, its categories, a Cargo's page and its reviews."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.errors import Conflict, Forbidden
from coordinator.marketplace import submission_rules as rules
from coordinator.marketplace.registry import latest_scans, published_cargo, scan_summary
from coordinator.marketplace.tables import CargoReview, CargoVersion
from coordinator.workloads.models import Workload

# --- the catalogue and reviews -----------------------------------------------------------------------


async def catalogue(
    session: AsyncSession, *, category: str | None = None, q: str | None = None
) -> list[Workload]:
    query = select(Workload).where(Workload.is_enabled.is_(True), Workload.suspended_at.is_(None))
    if category:
        query = query.where(Workload.category == category)
    if q:
        pattern = "%" + re.sub(r"([%_\\])", r"\\\1", q) + "%"
        query = query.where(Workload.name.ilike(pattern) | Workload.description.ilike(pattern))
    return list((await session.execute(query.order_by(Workload.reputation.desc(), Workload.id))).scalars())


async def categories(session: AsyncSession) -> list[tuple[str, int]]:
    query = (
        select(Workload.category, func.count())
        .where(Workload.is_enabled.is_(True), Workload.suspended_at.is_(None), Workload.category.is_not(None))
        .group_by(Workload.category)
        .order_by(Workload.category)
    )
    counts = {str(c): int(n) for c, n in (await session.execute(query)).all()}
    return [(c, counts.get(c, 0)) for c in rules.CATEGORIES]


async def cargo_detail(session: AsyncSession, slug: str) -> dict[str, Any]:
    workload = await published_cargo(session, slug)
    versions = (
        await session.execute(
            select(CargoVersion)
            .where(CargoVersion.workload_id == workload.id)
            .order_by(CargoVersion.id.desc())
        )
    ).scalars()
    rating = (
        await session.execute(
            select(func.avg(CargoReview.rating), func.count()).where(CargoReview.workload_id == workload.id)
        )
    ).one()
    scans = await latest_scans(session, workload_id=workload.id)
    return {
        "workload": workload,
        "versions": [
            {
                "version": v.version,
                "image_digest": v.image_digest,
                "changelog": v.changelog,
                "published_at": v.published_at,
            }
            for v in versions
        ],
        "rating": float(rating[0]) if rating[0] is not None else None,
        "reviews": int(rating[1]),
        "scan": scan_summary(scans),
    }


async def reviews_of(session: AsyncSession, slug: str) -> list[CargoReview]:
    workload = await published_cargo(session, slug)
    query = select(CargoReview).where(CargoReview.workload_id == workload.id).order_by(CargoReview.id.desc())
    return list((await session.execute(query)).scalars())


async def add_review(
    session: AsyncSession, user: User, slug: str, rating: int, comment: str | None, complaint: bool
) -> tuple[CargoReview, list[str]]:
    """A consumer rates a Cargo they ran (one review each); returns the reputation events it gives."""
    workload = await published_cargo(session, slug)
    ran = await session.execute(
        text(
            "SELECT 1 FROM jobs WHERE user_id = :u AND workload_id = :w "
            "AND state IN ('succeeded', 'failed', 'timeout') LIMIT 1"
        ),
        {"u": user.id, "w": workload.id},
    )
    if ran.first() is None:
        raise Forbidden("Only consumers who ran this Cargo can review it")
    inserted = await session.execute(
        insert(CargoReview)
        .values(
            workload_id=workload.id, user_id=user.id, rating=rating, comment=comment, is_complaint=complaint
        )
        .on_conflict_do_nothing()
        .returning(CargoReview.id)
    )
    review_id = inserted.scalar()
    if review_id is None:
        raise Conflict("You already reviewed this Cargo", code="already_reviewed")
    review = await session.get(CargoReview, review_id)
    assert review is not None
    events = (["positive_rating"] if rating >= 4 else []) + (["complaint"] if complaint else [])
    return review, events
