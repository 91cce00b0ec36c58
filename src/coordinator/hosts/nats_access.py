"""Who may do what over NATS: the per-Island credentials (issue, revoke, check) and the permissions the
auth callout grants (docs/security.md, docs/decisions/nats-auth.md).

A per-Island credential is user = the host id, password = a random secret shown once to the Island's
owner (only its HMAC digest is stored). It is confined to that Island's subjects (island-protocol §2–3).
The compatibility mode's single shared password (user `island`, off unless configured) is confined to
Island subjects of any host, never the coordinator's own subjects or JetStream management."""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.service import digest
from coordinator.errors import Forbidden, NotFound
from coordinator.hosts.models import Host, HostNatsCredential
from coordinator.protocol import subjects
from coordinator.repo.base import utcnow

SHARED_USER = "island"
# The callout answers this user (password = the coordinator's own NATS password) with a system-account
# user, used only to disconnect the live connections of a revoked credential ($SYS kick API).
SYSTEM_USER = "coordinator-system"
GLOBAL_ACCOUNT = "$G"
SYSTEM_ACCOUNT = "$SYS"

ISLAND_PUBLISHES = ("heartbeat", "status", "output", "progress", "image", "lease", "ping")
ISLAND_SUBSCRIBES = ("jobs", "cancel", "probe", "preload")

# Marks on hosts.nats_credential.
OWN_CREDENTIAL = "island"
SHARED_CREDENTIAL = "shared"


@dataclass(frozen=True)
class Grant:
    """What the auth callout puts in the user JWT: account, display name and permissions."""

    kind: str  # "island", "shared" or "system"
    name: str
    account: str = GLOBAL_ACCOUNT
    host_id: uuid.UUID | None = None
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = True
    tags: tuple[str, ...] = field(default=())

    def permissions(self) -> dict[str, Any]:
        """The `pub`/`sub`/`resp` part of a nats-io/jwt v2 user claim (empty allow lists = nothing)."""
        if self.kind == "system":
            return {}
        perms: dict[str, Any] = {
            "pub": {"allow": list(self.publish)},
            "sub": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            perms["resp"] = {"max": 1, "ttl": 0}
        return perms


def island_grant(host_id: str) -> Grant:
    """One Island: its own I→C subjects, the two shared subjects, JetStream look-ups of stream `JOBS` and
    its own consumer `host-<id>` (create only with its own filter subject), acks of that consumer; it
    subscribes to its own C→I subjects and to reply inboxes; it may answer requests (probe)."""
    consumer = subjects.jobs_consumer(host_id)
    jobs = subjects.host_subject(host_id, "jobs")
    stream = subjects.JOBS_STREAM
    return Grant(
        kind="island",
        name=host_id,
        host_id=uuid.UUID(host_id),
        publish=(
            *(subjects.host_subject(host_id, s) for s in ISLAND_PUBLISHES),
            subjects.REGISTER,
            subjects.PAIRING,
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{jobs}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ),
        subscribe=(*(subjects.host_subject(host_id, s) for s in ISLAND_SUBSCRIBES), "_INBOX.>"),
        tags=(f"host:{host_id}",),
    )


def shared_grant() -> Grant:
    """The compatibility mode: Island subjects of every host (the original's trust model), still none of
    the coordinator's own subjects (pub/sub, forwarding, wake-ups) and no stream or consumer management
    beyond an Island's own calls."""
    stream = subjects.JOBS_STREAM
    return Grant(
        kind="shared",
        name=SHARED_USER,
        publish=(
            *(subjects.host_subject("*", s) for s in ISLAND_PUBLISHES),
            subjects.REGISTER,
            subjects.PAIRING,
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.*",
            f"$JS.API.CONSUMER.CREATE.{stream}.*.host.*.jobs",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>",
        ),
        subscribe=(*(subjects.host_subject("*", s) for s in ISLAND_SUBSCRIBES), "_INBOX.>"),
        tags=("shared",),
    )


def system_grant() -> Grant:
    return Grant(kind="system", name=SYSTEM_USER, account=SYSTEM_ACCOUNT)


def new_secret() -> str:
    """A URL-safe secret (it travels as the password in the Island's `nats_url` userinfo)."""
    return secrets.token_urlsafe(32)


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class AccessConfig:
    """What the callout needs to decide: the HMAC key, the shared password (None = mode off) and the
    coordinator's own password (for its system-account user; None = no kick support)."""

    secret_key: str
    shared_password: str | None = None
    coordinator_password: str | None = None


CHECK_SQL = text(
    """
    UPDATE host_nats_credentials SET last_connected_at = now()
    WHERE host_id = :host_id AND revoked_at IS NULL AND secret_digest = :digest
    RETURNING id
    """
)


async def authorize(session: AsyncSession, config: AccessConfig, user: str, password: str) -> Grant | None:
    """The grant for a CONNECT's user/password, or None (refused). Per-Island credentials are checked
    against the database on every connect, so a revoked one is refused at once."""
    if not user or not password:
        return None
    if user == SYSTEM_USER:
        expected = config.coordinator_password
        return system_grant() if expected and same_secret(password, expected) else None
    if user == SHARED_USER:
        expected = config.shared_password
        return shared_grant() if expected and same_secret(password, expected) else None
    try:
        host_id = uuid.UUID(user)
    except ValueError:
        return None
    if str(host_id) != user:  # the subject tokens must be exactly the user name the Island publishes with
        return None
    row = await session.execute(
        CHECK_SQL, {"host_id": host_id, "digest": digest(config.secret_key, password)}
    )
    return island_grant(user) if row.first() is not None else None


@dataclass(frozen=True)
class IssuedCredential:
    host_id: uuid.UUID
    user: str
    password: str
    created_at: Any


async def _owned_host(session: AsyncSession, host_id: uuid.UUID, owner_id: int | None) -> Host:
    host = (await session.execute(select(Host).where(Host.id == host_id))).scalar_one_or_none()
    if host is None:
        raise NotFound("Island not found")
    if owner_id is not None and host.owner_id != owner_id:
        raise Forbidden("Only the Island's owner can manage its NATS credential")
    return host


async def issue_credential(
    session: AsyncSession, secret_key: str, host_id: uuid.UUID, *, owner_id: int | None, actor_id: int | None
) -> IssuedCredential:
    """A new credential for the Island (the previous one is revoked); `owner_id` None = an operator.
    An owner may also provision a credential for a new host id: the Island then exists, owned, before
    it first connects (so nobody else can pair it)."""
    exists = (await session.execute(select(Host.id).where(Host.id == host_id))).first() is not None
    if not exists and owner_id is not None:
        session.add(Host(id=host_id, owner_id=owner_id, status="offline", approved=False, paired_at=utcnow()))
        await session.flush()
    await _owned_host(session, host_id, owner_id)
    await revoke_credentials(session, host_id, owner_id=None)
    password = new_secret()
    row = HostNatsCredential(host_id=host_id, secret_digest=digest(secret_key, password), created_by=actor_id)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return IssuedCredential(host_id=host_id, user=str(host_id), password=password, created_at=row.created_at)


async def revoke_credentials(session: AsyncSession, host_id: uuid.UUID, *, owner_id: int | None) -> int:
    """Revoke the Island's active credential(s); the number revoked."""
    if owner_id is not None:
        await _owned_host(session, host_id, owner_id)
    result = await session.execute(
        update(HostNatsCredential)
        .where(HostNatsCredential.host_id == host_id, HostNatsCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(HostNatsCredential.id)
    )
    return len(result.all())


async def has_own_credential(session: AsyncSession, host_id: uuid.UUID) -> bool:
    found = await session.execute(
        select(HostNatsCredential.id).where(
            HostNatsCredential.host_id == host_id, HostNatsCredential.revoked_at.is_(None)
        )
    )
    return found.first() is not None


async def mark_credential(session: AsyncSession, host_id: uuid.UUID, kind: str | None) -> None:
    await session.execute(update(Host).where(Host.id == host_id).values(nats_credential=kind))


def island_url(public_nats_url: str, user: str, password: str) -> str:
    """`nats://<user>:<password>@host:port` (island-protocol §1: the Island sends the userinfo)."""
    scheme, sep, rest = public_nats_url.partition("://")
    if not sep:
        scheme, rest = "nats", public_nats_url
    rest = rest.rpartition("@")[2]
    return f"{scheme}://{user}:{password}@{rest}"
