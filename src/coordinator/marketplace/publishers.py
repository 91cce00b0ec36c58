"""Cargo publishers: their profile and tier, whether they count as verified, and their signing keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.errors import Forbidden, NotFound, ValidationFailed
from coordinator.marketplace import signing
from coordinator.marketplace import submission_rules as rules
from coordinator.marketplace.tables import Publisher
from coordinator.verification.service import is_verified

VERIFIED_TIERS = ("verified", "organization", "partner")


# --- publishers --------------------------------------------------------------------------------------


async def publisher_of(session: AsyncSession, user_id: int, *, lock: bool = False) -> Publisher:
    """The user's publisher record (an Individual one is created on first use)."""
    await session.execute(insert(Publisher).values(user_id=user_id).on_conflict_do_nothing())
    query = select(Publisher).where(Publisher.user_id == user_id)
    if lock:
        query = query.with_for_update()
    publisher = (await session.execute(query)).scalar_one()
    return publisher


async def publisher_is_verified(session: AsyncSession, publisher: Publisher) -> bool:
    """Verified or above, with the identity check (KYC) passed."""
    return publisher.tier in VERIFIED_TIERS and await is_verified(session, publisher.user_id)


async def update_publisher(
    session: AsyncSession,
    user_id: int,
    *,
    tier: str | None = None,
    signing_public_key: str | None = None,
    cargo_limit: int | None = None,
    by_admin: bool = False,
) -> Publisher:
    """Register a cosign key, or change tier: a publisher may become Verified once KYC passed;
    Organization and Partner (and custom limits) are granted by an admin (of an existing user: 404)."""
    if by_admin and await session.get(User, user_id) is None:
        raise NotFound("User not found")
    publisher = await publisher_of(session, user_id, lock=True)
    if tier is not None:
        if tier not in rules.TIERS:
            raise ValidationFailed("Invalid input", {"tier": [f"must be one of {', '.join(rules.TIERS)}"]})
        if not by_admin and tier not in ("individual", "verified"):
            raise Forbidden(f"The {tier} tier is granted by an operator")
        if tier == "verified" and not await is_verified(session, user_id):
            raise Forbidden("Publishing as a Verified publisher needs a completed identity verification")
        publisher.tier = tier
    if signing_public_key is not None:
        try:
            signing.load_public_key(signing_public_key)
        except ValueError as exc:
            raise ValidationFailed("Invalid input", {"signing_public_key": [str(exc)]}) from None
        publisher.signing_public_key = signing_public_key
    if cargo_limit is not None and by_admin:
        publisher.cargo_limit = cargo_limit
    await session.flush()
    return publisher


def publisher_view(publisher: Publisher) -> dict[str, Any]:
    return {
        "user_id": publisher.user_id,
        "tier": publisher.tier,
        "cargo_limit": rules.cargo_limit(publisher.tier, publisher.cargo_limit),
        "signing_public_key": publisher.signing_public_key,
    }


# --- keys ----------------------------------------------------------------------------------------------


async def verified_publisher_keys(session: AsyncSession) -> list[dict[str, Any]]:
    """The cosign keys of Verified-or-above publishers whose identity is verified (GET /signing-keys)."""
    rows = (
        await session.execute(
            select(Publisher, User.email)
            .join(User, User.id == Publisher.user_id)
            .where(Publisher.signing_public_key.is_not(None), Publisher.tier.in_(VERIFIED_TIERS))
            .order_by(Publisher.user_id)
        )
    ).all()
    keys = []
    for publisher, email in rows:
        if await is_verified(session, publisher.user_id):
            keys.append(
                {
                    "key_id": f"publisher-{publisher.user_id}",
                    "public_key": publisher.signing_public_key,
                    "algorithm": "ecdsa-p256-sha256",
                    "issuer": email,
                }
            )
    return keys
