"""Tables of the hosts context."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, ForeignKey, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base, Timestamps


class Host(Timestamps, Base):
    __tablename__ = "hosts"

    # Chosen by the Island (a UUID v4 string); stored as uuid when it parses, else rejected.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # pending_approval, online, offline, suspended
    status: Mapped[str] = mapped_column(String(20), server_default="offline")
    approved: Mapped[bool] = mapped_column(server_default="false")
    suspended_at: Mapped[datetime | None]
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    flagged_for_review: Mapped[bool] = mapped_column(server_default="false")
    region: Mapped[str | None] = mapped_column(String(50))
    platform: Mapped[str | None] = mapped_column(String(30))
    transport: Mapped[str] = mapped_column(String(10), server_default="nats")
    agent_version: Mapped[str | None] = mapped_column(String(30))
    gpu_model: Mapped[str | None] = mapped_column(String(200))
    gpu_vram_mb: Mapped[int | None] = mapped_column(Integer)
    cpu_cores: Mapped[int | None] = mapped_column(Integer)
    ram_mb: Mapped[int | None] = mapped_column(Integer)
    supported_runtimes: Mapped[list[str]] = mapped_column(ARRAY(String(20)), server_default="{}")
    max_concurrent: Mapped[int] = mapped_column(Integer, server_default="1")
    active_jobs: Mapped[int] = mapped_column(Integer, server_default="0")
    warm_workload_ids: Mapped[list[str]] = mapped_column(ARRAY(String(20)), server_default="{}")
    asking_prices: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    last_heartbeat: Mapped[dict[str, Any] | None]
    rtt_ms: Mapped[float | None]
    karma: Mapped[int] = mapped_column(Integer, server_default="0")
    pending_minutes: Mapped[int] = mapped_column(Integer, server_default="0")
    earnings_total: Mapped[Decimal] = mapped_column(server_default="0")
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(index=True)
    paired_at: Mapped[datetime | None]
    device_token_hash: Mapped[str | None] = mapped_column(String(64))
    # How the Island authenticated to NATS when it last registered: "island" (its own credential),
    # "shared" (the compatibility mode's shared password) or None (a broker without authentication).
    nats_credential: Mapped[str | None] = mapped_column(String(10))


class PairingCode(Base):
    __tablename__ = "pairing_codes"

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    host_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime]
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class DevicePairing(Base):
    """A phone or browser Island waiting for its owner to enter its code (pairing without NATS)."""

    __tablename__ = "device_pairings"

    poll_token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(6))
    expires_at: Mapped[datetime]
    issued_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class DeviceToken(Base):
    """The credential of a channel Island: 30 days, sliding on use, revocable by its owner."""

    __tablename__ = "device_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    host_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class HostNatsCredential(Base):
    """A NATS user/password for one Island (user = host id); only the HMAC digest of the secret is kept.
    Issuing a new one revokes the previous; a revoked one is refused by the auth callout at connect."""

    __tablename__ = "host_nats_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    secret_digest: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]
    last_connected_at: Mapped[datetime | None]
