"""Accounts: users, API keys (HMAC at rest), magic links and sliding sessions."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.mailer import Mailer
from coordinator.accounts.models import ApiKey, MagicLink, User, UserSession
from coordinator.accounts.principals import evict_on_commit
from coordinator.billing import ledger
from coordinator.errors import NotFound, ValidationFailed
from coordinator.repo.base import utcnow

API_KEY_PREFIX = "ak_"
DEFAULT_SCOPES = ("read", "write")
VALID_SCOPES = frozenset(DEFAULT_SCOPES)
# last_used_at is informational; writing it on every request would put a write on the hot read path.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest(secret_key: str, token: str) -> str:
    """HMAC-SHA-256 of a high-entropy token: fast to check on every request, useless if the table leaks."""
    return hmac.new(secret_key.encode(), token.encode(), hashlib.sha256).hexdigest()


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email or len(email) > 320:
        raise ValidationFailed("Invalid e-mail address", {"email": ["is not a valid e-mail address"]})
    return email


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, and with which scopes."""

    user: User
    scopes: frozenset[str]
    api_key_id: uuid.UUID | None = None
    key_use_due: bool = False  # the key's last_used_at is older than LAST_USED_RESOLUTION

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return (
        await session.execute(select(User).where(User.email == normalize_email(email)))
    ).scalar_one_or_none()


async def create_user(
    session: AsyncSession, email: str, *, credits: Decimal = Decimal(0), admin: bool = False
) -> User:
    user = User(email=normalize_email(email), role="admin" if admin else "user", confirmed_at=utcnow())
    session.add(user)
    await session.flush()
    if credits > 0:
        await ledger.grant(session, user.id, credits, "welcome credits")
    await session.refresh(user)
    return user


async def get_or_create_user(session: AsyncSession, email: str, *, credits: Decimal) -> User:
    user = await get_user_by_email(session, email)
    return user if user is not None else await create_user(session, email, credits=credits)


async def set_admin(session: AsyncSession, user: User, admin: bool) -> None:
    user.role = "admin" if admin else "user"
    evict_on_commit(session, user_id=user.id)
    await session.flush()


async def set_banned(session: AsyncSession, user_id: int, banned: bool, reason: str | None = None) -> User:
    """Ban (or lift the ban on) a user: a banned user's API keys and sessions are refused from the next
    request on; their jobs and money are left as they are."""
    user = await session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound("User not found")
    user.banned_at = utcnow() if banned else None
    user.ban_reason = (reason or "").strip()[:2000] or None if banned else None
    evict_on_commit(session, user_id=user_id)
    await session.flush()
    return user


async def list_users(session: AsyncSession, *, search: str | None = None, limit: int = 50) -> list[User]:
    """Users for the operators' page, newest first; `search` matches part of the e-mail."""
    query = select(User).order_by(User.id.desc()).limit(limit)
    if search:
        query = query.where(User.email.contains(search.strip().lower(), autoescape=True))
    return list((await session.execute(query)).scalars())


# --- API keys -------------------------------------------------------------------------------------------


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


async def create_api_key(
    session: AsyncSession,
    secret_key: str,
    user: User,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is never stored and never shown again."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationFailed("Invalid API key", {"name": ["must be 1–200 characters"]})
    chosen = list(scopes) if scopes else list(DEFAULT_SCOPES)
    if bad := [s for s in chosen if s not in VALID_SCOPES]:
        raise ValidationFailed("Invalid API key", {"scopes": [f"unknown scope {s!r}" for s in bad]})
    plaintext = generate_api_key()
    key = ApiKey(
        id=uuid.uuid4(),
        user_id=user.id,
        name=name,
        prefix=plaintext[:8],
        key_hash=digest(secret_key, plaintext),
        scopes=sorted(set(chosen)),
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    await session.refresh(key)
    return key, plaintext


async def authenticate_api_key(session: AsyncSession, secret_key: str, token: str) -> Principal | None:
    """The principal a bearer key stands for, or None if it is unknown, revoked or expired. Read-only:
    `touch_api_key` records the use when `Principal.key_use_due` says so."""
    found = await authenticate_api_key_row(session, secret_key, token)
    return None if found is None else found[0]


async def authenticate_api_key_row(
    session: AsyncSession, secret_key: str, token: str
) -> tuple[Principal, datetime | None] | None:
    """`authenticate_api_key`, with the key's `expires_at` (for a cache of the answer)."""
    if not token.startswith(API_KEY_PREFIX) or len(token) > 200:
        return None
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == digest(secret_key, token), ApiKey.revoked_at.is_(None))
        )
    ).first()
    if row is None:
        return None
    key, user = row
    now = utcnow()
    if (key.expires_at is not None and key.expires_at <= now) or user.is_banned:
        return None
    due = key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION
    principal = Principal(user=user, scopes=frozenset(key.scopes), api_key_id=key.id, key_use_due=due)
    return principal, key.expires_at


async def touch_api_key(session: AsyncSession, key_id: uuid.UUID) -> None:
    """Record that a key was used now (informational: no need to wait for the WAL flush)."""
    await session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


async def list_api_keys(session: AsyncSession, user_id: int) -> list[ApiKey]:
    rows = await session.execute(
        select(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at.desc())
    )
    return list(rows.scalars())


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"{what} not found") from None


async def revoke_api_key(session: AsyncSession, user_id: int, key_id: str) -> ApiKey:
    """Revoke at once: the next request with the key is refused. Another user's key is 'not found'."""
    key = (
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == parse_uuid(key_id, "API key"),
                ApiKey.user_id == user_id,
                ApiKey.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
            .returning(ApiKey)
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("API key not found")
    evict_on_commit(session, key_id=key.id)
    return key


# --- Magic links and sessions ---------------------------------------------------------------------------


async def request_magic_link(
    session: AsyncSession, secret_key: str, mailer: Mailer, email: str, *, base_url: str, ttl_seconds: int
) -> str:
    """Create a single-use sign-in link and send it. Returns the token (for the caller's tests and logs)."""
    email = normalize_email(email)
    token = secrets.token_urlsafe(32)
    session.add(
        MagicLink(
            email=email,
            token_hash=digest(secret_key, token),
            expires_at=utcnow() + timedelta(seconds=ttl_seconds),
        )
    )
    link = f"{base_url.rstrip('/')}/auth/magic/{token}"
    await mailer.send(
        session,
        email,
        "Your Archipelag sign-in link",
        f"Sign in to Archipelag: {link}\n\nThe link is valid for {ttl_seconds // 60} minutes and works once.",
    )
    return token


async def consume_magic_link(
    session: AsyncSession, secret_key: str, token: str, *, signup_credits: Decimal, session_ttl_days: int
) -> tuple[User, str]:
    """Spend a magic link (once, before it expires) and open a session; creates the account if new."""
    link = (
        await session.execute(
            update(MagicLink)
            .where(
                MagicLink.token_hash == digest(secret_key, token),
                MagicLink.used_at.is_(None),
                MagicLink.expires_at > utcnow(),
            )
            .values(used_at=utcnow())
            .returning(MagicLink.email)
        )
    ).scalar_one_or_none()
    if link is None:
        raise NotFound("This sign-in link is invalid or has expired")
    user = await get_or_create_user(session, link, credits=signup_credits)
    return user, await open_session(session, secret_key, user, ttl_days=session_ttl_days)


async def open_session(session: AsyncSession, secret_key: str, user: User, *, ttl_days: int) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        UserSession(
            user_id=user.id,
            token_hash=digest(secret_key, token),
            expires_at=utcnow() + timedelta(days=ttl_days),
        )
    )
    await session.flush()
    return token


async def authenticate_session(
    session: AsyncSession, secret_key: str, token: str, *, ttl_days: int
) -> Principal | None:
    """The principal behind a session cookie; each use slides the expiry forward (30 days by default)."""
    now = utcnow()
    user_id = (
        await session.execute(
            update(UserSession)
            .where(UserSession.token_hash == digest(secret_key, token), UserSession.expires_at > now)
            .values(last_seen_at=now, expires_at=now + timedelta(days=ttl_days))
            .returning(UserSession.user_id)
        )
    ).scalar_one_or_none()
    if user_id is None:
        return None
    user = await session.get(User, user_id)
    await session.commit()
    if user is None or user.is_banned:
        return None
    return Principal(user=user, scopes=VALID_SCOPES)


async def list_sessions(session: AsyncSession, user_id: int) -> list[UserSession]:
    """The user's open sessions (one per signed-in browser), most recently used first."""
    rows = await session.execute(
        select(UserSession)
        .where(UserSession.user_id == user_id, UserSession.expires_at > utcnow())
        .order_by(UserSession.last_seen_at.desc())
    )
    return list(rows.scalars())


async def revoke_session(session: AsyncSession, user_id: int, session_id: int) -> None:
    """Sign one of the user's browsers out; another user's session is 'not found'."""
    result = await session.execute(
        delete(UserSession).where(UserSession.id == session_id, UserSession.user_id == user_id)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound("Session not found")


async def close_session(session: AsyncSession, secret_key: str, token: str) -> None:
    await session.execute(delete(UserSession).where(UserSession.token_hash == digest(secret_key, token)))


async def delete_expired_auth_tokens(session: AsyncSession) -> tuple[int, int]:
    """AuthCleanup: drop expired magic links and sessions. Returns how many of each were deleted."""
    now = utcnow()
    links = await session.execute(delete(MagicLink).where(MagicLink.expires_at <= now))
    sessions = await session.execute(delete(UserSession).where(UserSession.expires_at <= now))
    return links.rowcount or 0, sessions.rowcount or 0  # type: ignore[attr-defined]
