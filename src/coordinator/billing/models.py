"""Tables of the billing context: the ledger, earnings and payouts."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base


class Transaction(Base):
    """One credit movement: grant, charge, refund, earning or payout, next to the balance it changed."""

    __tablename__ = "transactions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal]
    balance_after: Mapped[Decimal | None]
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    host_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    # Makes a retried write a no-op: e.g. "refund:<job_id>".
    idempotency_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


Index("ix_transactions_user_created", Transaction.user_id, Transaction.created_at)
Index("ix_transactions_job", Transaction.job_id)


class HostEarning(Base):
    __tablename__ = "host_earnings"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    host_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    amount: Mapped[Decimal]
    payout_id: Mapped[int | None] = mapped_column(ForeignKey("payouts.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Payout(Base):
    __tablename__ = "payouts"
    __table_args__ = (UniqueConstraint("owner_id", "period_start", name="uq_payouts_owner_period"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    period_start: Mapped[date] = mapped_column(Date)
    amount: Mapped[Decimal]
    # pending, paid, failed
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    provider: Mapped[str] = mapped_column(String(30))
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    paid_at: Mapped[datetime | None]


class BidPreference(Base):
    """A user's saved bid for one Cargo (step two of budget resolution)."""

    __tablename__ = "bid_preferences"
    __table_args__ = (UniqueConstraint("user_id", "workload_id", name="uq_bid_preferences_user_workload"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"))
    bid: Mapped[Decimal]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class PayoutAccount(Base):
    """Where an Island owner is paid: the provider's account id (a Stripe Connect account, `acct_…`)."""

    __tablename__ = "payout_accounts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(30))
    account_ref: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class RateLimitCounter(Base):
    """Requests per key per fixed window; shared by every replica through PostgreSQL."""

    __tablename__ = "rate_limit_counters"
    __table_args__ = (PrimaryKeyConstraint("bucket", "window_start"),)

    bucket: Mapped[str] = mapped_column(String(120))
    window_start: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer, server_default="0")
