"""What an Island owner may see and do with their own Islands (the settings page)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import Forbidden, NotFound
from coordinator.hosts import service
from coordinator.hosts.models import Host

# The suspension reason of an owner's own suspension (which the owner may lift, unlike an operator's).
OWNER_SUSPENSION = "suspended by its owner"


async def list_owned_hosts(session: AsyncSession, owner_id: int) -> list[Host]:
    rows = await session.execute(
        select(Host).where(Host.owner_id == owner_id).order_by(Host.paired_at, Host.id)
    )
    return list(rows.scalars())


async def _owned(session: AsyncSession, raw_id: str, owner_id: int) -> Host:
    host = await service.get_host(session, raw_id)
    if host.owner_id != owner_id:
        raise NotFound("Island not found")  # someone else's Island is not even shown to exist
    return host


async def suspend_own(session: AsyncSession, raw_id: str, owner_id: int) -> Host:
    """An owner takes their Island out of the pool (it gets no new work until resumed)."""
    await _owned(session, raw_id, owner_id)
    return await service.suspend(session, raw_id, OWNER_SUSPENSION)


async def resume_own(session: AsyncSession, raw_id: str, owner_id: int) -> Host:
    """An owner puts back an Island they suspended themselves; an operator's suspension stays."""
    host = await _owned(session, raw_id, owner_id)
    if host.status == "suspended" and host.suspension_reason != OWNER_SUSPENSION:
        raise Forbidden("An operator suspended this Island; only an operator can resume it")
    return await service.resume(session, raw_id)
