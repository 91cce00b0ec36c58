"""Tables of the verification context. Only the verified name, issuing country, status and the provider's
reference are kept — never documents, images or any other identity data.

A user's current status is `users.verification_status` (written only by `verification.service`); these
tables hold each attempt, every status change with who and why, and the Stripe events already applied."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base, Timestamps


class Verification(Timestamps, Base):
    """One attempt: started by the user, decided by the provider or an admin."""

    __tablename__ = "verifications"
    __table_args__ = (
        Index("ix_verifications_provider_ref", "provider", "provider_ref"),
        # At most one undecided attempt per user: a concurrent second start cannot create another.
        Index(
            "uq_verifications_pending_user",
            "user_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # pending, verified, rejected, revoked, superseded
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    provider: Mapped[str] = mapped_column(String(30), server_default="builtin")
    provider_ref: Mapped[str | None] = mapped_column(String(200))  # Stripe: the VerificationSession id
    verified_name: Mapped[str | None] = mapped_column(String(300))
    country: Mapped[str | None] = mapped_column(String(2))  # the document's issuing country (ISO 3166-1)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]


class VerificationEvent(Base):
    """A change of a user's status: from, to, who (user, admin, provider) and why."""

    __tablename__ = "verification_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    verification_id: Mapped[int | None] = mapped_column(ForeignKey("verifications.id", ondelete="SET NULL"))
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class StripeIdentityEvent(Base):
    """A Stripe webhook event already applied: a redelivery of the same event id changes nothing."""

    __tablename__ = "stripe_identity_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    session_ref: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(30))
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
