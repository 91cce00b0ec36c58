"""Channel Islands' credentials: pairing a phone or browser with a code, and its 30-day device token.

The device asks for a pairing (a new Island row, transport `websocket`, and a code it shows), the owner
claims the code like any Island's (`pairing.claim_pairing_code`), then the device exchanges its poll
token — once — for a device token. Tokens are stored as HMACs, slide on use, and are revocable."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.service import digest
from coordinator.errors import Gone, NotFound
from coordinator.hosts import rules
from coordinator.hosts.models import DevicePairing, DeviceToken, Host, PairingCode
from coordinator.hosts.pairing import new_code

DEVICE_TOKEN_PREFIX = "dt_"
POLL_TOKEN_PREFIX = "dp_"
DEVICE_TOKEN_DAYS = 30

# Exchange a poll token once: only the first request after approval gets the device token.
ISSUE_SQL = text(
    """
    UPDATE device_pairings SET issued_at = now()
    WHERE poll_token_hash = :hash AND issued_at IS NULL
    RETURNING host_id
    """
)

# Check a device token and slide its expiry (one statement on every socket connect).
USE_TOKEN_SQL = text(
    """
    UPDATE device_tokens SET last_used_at = now(), expires_at = now() + make_interval(days => :days)
    WHERE token_hash = :hash AND revoked_at IS NULL AND expires_at > now()
    RETURNING id, host_id, user_id, expires_at
    """
)


@dataclass(frozen=True)
class PairingStarted:
    host_id: uuid.UUID
    code: str
    expires_in_seconds: int
    poll_token: str


@dataclass(frozen=True)
class IssuedToken:
    host_id: uuid.UUID
    token_id: uuid.UUID
    device_token: str
    expires_at: datetime


@dataclass(frozen=True)
class DeviceCredential:
    token_id: uuid.UUID
    host_id: uuid.UUID
    user_id: int


def is_device_token(token: str) -> bool:
    return token.startswith(DEVICE_TOKEN_PREFIX)


async def start_pairing(
    session: AsyncSession,
    *,
    approval_required: bool,
    ttl_seconds: int,
    platform: str | None = None,
    name: str | None = None,
    secret_key: str,
) -> PairingStarted:
    """A new channel Island (its id chosen here) and the code its owner will enter."""
    host_id = uuid.uuid4()
    status, approved = rules.initial_status(approval_required)
    session.add(
        Host(
            id=host_id,
            status="offline" if approved else status,
            approved=approved,
            transport="websocket",
            platform=platform,
            name=name,
        )
    )
    await session.flush()
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    code = await new_code(session, host_id, expires_at)
    poll_token = POLL_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        DevicePairing(
            poll_token_hash=digest(secret_key, poll_token),
            host_id=host_id,
            code=code.code,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return PairingStarted(host_id, code.code, ttl_seconds, poll_token)


async def exchange_poll_token(session: AsyncSession, secret_key: str, poll_token: str) -> IssuedToken:
    """The device token, once the owner has claimed the code: 404 before, 410 after expiry or reuse."""
    token_hash = digest(secret_key, poll_token)
    pairing = await session.get(DevicePairing, token_hash)
    if pairing is None:
        raise NotFound("Unknown pairing")
    code = await session.get(PairingCode, pairing.code)
    claimed_by = code.claimed_by if code is not None and code.host_id == pairing.host_id else None
    if pairing.issued_at is not None:
        raise Gone("This pairing has already been exchanged for a device token")
    if claimed_by is None:
        if pairing.expires_at <= datetime.now(UTC):
            raise Gone("The pairing code expired before it was entered")
        raise NotFound("The pairing code has not been entered yet")
    if (await session.execute(ISSUE_SQL, {"hash": token_hash})).first() is None:
        raise Gone("This pairing has already been exchanged for a device token")
    return await issue_device_token(session, secret_key, pairing.host_id, claimed_by)


async def issue_device_token(
    session: AsyncSession, secret_key: str, host_id: uuid.UUID, user_id: int
) -> IssuedToken:
    token = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(days=DEVICE_TOKEN_DAYS)
    row = DeviceToken(
        id=uuid.uuid4(),
        host_id=host_id,
        user_id=user_id,
        token_hash=digest(secret_key, token),
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return IssuedToken(host_id, row.id, token, expires_at)


async def authenticate_device(session: AsyncSession, secret_key: str, token: str) -> DeviceCredential | None:
    """The Island a live device token speaks for (its expiry slides); None if unknown, expired, revoked."""
    row = (
        await session.execute(USE_TOKEN_SQL, {"hash": digest(secret_key, token), "days": DEVICE_TOKEN_DAYS})
    ).first()
    return None if row is None else DeviceCredential(row.id, row.host_id, row.user_id)


async def token_is_live(session: AsyncSession, token_id: uuid.UUID) -> bool:
    row = await session.get(DeviceToken, token_id)
    return row is not None and row.revoked_at is None and row.expires_at > datetime.now(UTC)


async def list_device_tokens(session: AsyncSession, user_id: int) -> list[DeviceToken]:
    rows = await session.scalars(
        select(DeviceToken).where(DeviceToken.user_id == user_id).order_by(DeviceToken.created_at.desc())
    )
    return list(rows)


async def revoke_device_token(session: AsyncSession, user_id: int, raw_id: str) -> DeviceToken:
    """Revoke one of the user's device tokens (idempotent); another user's id is 404."""
    try:
        token_id = uuid.UUID(raw_id)
    except ValueError:
        raise NotFound("Device token not found") from None
    row = (
        await session.execute(
            select(DeviceToken)
            .where(DeviceToken.id == token_id, DeviceToken.user_id == user_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("Device token not found")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.flush()
    return row
