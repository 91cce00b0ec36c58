"""Pairing an Island with an account: a short code shown by the Island, claimed by a signed-in user."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.errors import ValidationFailed
from coordinator.hosts import rules
from coordinator.hosts.models import Host, PairingCode
from coordinator.hosts.service import ensure_host
from coordinator.protocol.messages import PairingResponse

# Claim: only an unexpired, unclaimed code wins; concurrent claims of one code see one row.
CLAIM_CODE_SQL = text(
    """
    UPDATE pairing_codes SET claimed_by = :user_id, claimed_at = now()
    WHERE code = :code AND claimed_by IS NULL AND expires_at > now()
    RETURNING host_id
    """
)


async def request_pairing(
    session: AsyncSession,
    host_id: uuid.UUID,
    *,
    approval_required: bool,
    ttl_seconds: int,
    pair_url: str,
) -> PairingResponse:
    """The reply to `coordinator.hosts.pairing`: a code (reused while valid) or "Island already paired"."""
    host = await ensure_host(session, host_id, approval_required=approval_required)
    if host.owner_id is not None or host.paired_at is not None:
        return PairingResponse(success=False, error=rules.ALREADY_PAIRED)
    now = datetime.now(UTC)
    current = (
        await session.execute(
            select(PairingCode)
            .where(
                PairingCode.host_id == host_id,
                PairingCode.claimed_by.is_(None),
                PairingCode.expires_at > now,
            )
            .order_by(PairingCode.expires_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if current is None:
        current = await new_code(session, host_id, now + timedelta(seconds=ttl_seconds))
    remaining = int((current.expires_at - now).total_seconds())
    return PairingResponse(
        success=True,
        code=current.code,
        expires_in_seconds=max(0, remaining),
        pair_url=f"{pair_url.rstrip('/')}?code={current.code}",
    )


async def new_code(session: AsyncSession, host_id: uuid.UUID, expires_at: datetime) -> PairingCode:
    # Expired codes free their value; a collision with a live code just draws again.
    await session.execute(text("DELETE FROM pairing_codes WHERE expires_at < now() - interval '1 day'"))
    for _ in range(20):
        code = rules.new_pairing_code()
        exists = await session.get(PairingCode, code)
        if exists is None:
            row = PairingCode(code=code, host_id=host_id, expires_at=expires_at)
            session.add(row)
            await session.flush()
            return row
    raise RuntimeError("could not draw a free pairing code")


async def claim_pairing_code(session: AsyncSession, raw_code: str, user_id: int) -> Host:
    """Link the Island that showed `raw_code` to the user's account."""
    code = rules.normalize_pairing_code(raw_code)
    if code is None:
        raise ValidationFailed("Invalid pairing code", {"code": ["is not a pairing code"]})
    host_id = (await session.execute(CLAIM_CODE_SQL, {"code": code, "user_id": user_id})).scalar_one_or_none()
    if host_id is None:
        raise ValidationFailed("Invalid pairing code", {"code": ["is unknown, expired or already used"]})
    host = (await session.execute(select(Host).where(Host.id == host_id).with_for_update())).scalar_one()
    if host.owner_id is not None and host.owner_id != user_id:
        raise ValidationFailed("Invalid pairing code", {"code": ["Island already paired"]})
    host.owner_id = user_id
    host.paired_at = datetime.now(UTC)
    return host
