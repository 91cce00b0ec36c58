"""The Cargo catalog: look-ups, the public view, and seeding the defaults."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import NotFound
from coordinator.workloads import rules
from coordinator.workloads.catalog import DEFAULT_CARGOS
from coordinator.workloads.models import Workload


async def list_workloads(session: AsyncSession, *, include_disabled: bool = False) -> list[Workload]:
    query = select(Workload).order_by(Workload.id)
    if not include_disabled:
        query = query.where(Workload.is_enabled.is_(True), Workload.suspended_at.is_(None))
    return list((await session.execute(query)).scalars())


async def get_by_slug(session: AsyncSession, slug: str) -> Workload:
    workload = (await session.execute(select(Workload).where(Workload.slug == slug))).scalar_one_or_none()
    if workload is None:
        raise NotFound("Cargo not found")
    return workload


async def default_chat_workload(session: AsyncSession) -> Workload:
    query = select(Workload).where(Workload.is_default_chat.is_(True)).order_by(Workload.id).limit(1)
    workload = (await session.execute(query)).scalar_one_or_none()
    if workload is None:
        return await get_by_slug(session, "llm-chat")
    return workload


async def seed_default_cargos(session: AsyncSession) -> int:
    """Insert the default Cargos that are missing; never overwrites an operator's edits. Returns how many."""
    inserted = 0
    for cargo in DEFAULT_CARGOS:
        values = {**cargo, "price_per_job": Decimal(str(cargo["price_per_job"]))}
        result = await session.execute(
            insert(Workload).values(**values).on_conflict_do_nothing(index_elements=["slug"])
        )
        inserted += result.rowcount or 0  # type: ignore[attr-defined]
    return inserted


def public_view(workload: Workload) -> dict[str, Any]:
    """The Workload object of the client API (client-api §3.4), plus extra fields the SDKs ignore."""
    return {
        "id": workload.id,
        "name": workload.name,
        "slug": workload.slug,
        "description": workload.description,
        "runtime_type": rules.public_runtime_type(workload.runtime),
        "runtime": workload.runtime,
        "kind": workload.kind,
        "required_vram_mb": max(0, workload.required_vram_mb),
        "required_ram_mb": max(0, workload.required_ram_mb),
        "required_cpu_cores": max(0, workload.required_cpu_cores),
        "quantization": workload.quantization,
        "platforms": list(workload.platforms or []),
        "price_per_job": float(workload.price_per_job),
        "is_enabled": bool(workload.is_enabled),
        "trust_level": workload.trust_level,
        "sandbox_tier": rules.sandbox_tier(workload.trust_level),
        "max_duration_seconds": rules.max_duration_seconds(
            workload.trust_level, workload.max_duration_seconds
        ),
        "input_schema": workload.input_schema,
        "reputation": float(workload.reputation),
        "category": workload.category,
        "version": workload.version,
        "signed": bool(workload.signed),
        "publisher_id": workload.publisher_id,
    }
