"""The verification (KYC) context's public API.

MINIMAL STAND-IN written on the registry branch: the KYC work (a parallel branch) owns this module and
its full version replaces this one at merge. The registry depends only on `is_verified` below, with
exactly this signature, reading the existing `verifications` table."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.verification.models import Verification


async def is_verified(session: AsyncSession, user_id: int) -> bool:
    """Whether the user holds a verification with status 'verified'."""
    query = select(exists().where(Verification.user_id == user_id, Verification.status == "verified"))
    return bool((await session.execute(query)).scalar())
