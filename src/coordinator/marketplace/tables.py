"""Tables of the Cargo registry: publishers, the recorded moves of submissions, published versions and
consumer reviews (submissions, scans and reputation events live in `workloads.models`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base


class Publisher(Base):
    __tablename__ = "publishers"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    # individual, verified, organization, partner
    tier: Mapped[str] = mapped_column(String(20), server_default="individual")
    cargo_limit: Mapped[int | None] = mapped_column(Integer)  # a Partner's custom limit
    # PEM of the publisher's cosign public key (ECDSA P-256).
    signing_public_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class SubmissionEvent(Base):
    """One applied move of a submission: who (None = the coordinator), when, why."""

    __tablename__ = "submission_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    submission_id: Mapped[int] = mapped_column(
        ForeignKey("workload_submissions.id", ondelete="CASCADE"), index=True
    )
    move: Mapped[str] = mapped_column(String(30))
    from_status: Mapped[str] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CargoVersion(Base):
    """A published version of a Cargo (the catalogue serves the newest)."""

    __tablename__ = "cargo_versions"
    __table_args__ = (UniqueConstraint("workload_id", "version"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), index=True)
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("workload_submissions.id", ondelete="SET NULL")
    )
    version: Mapped[str] = mapped_column(String(50))
    image_digest: Mapped[str | None] = mapped_column(String(100))
    changelog: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CargoReview(Base):
    """A consumer's rating of a Cargo they ran (one per user and Cargo; a complaint is flagged)."""

    __tablename__ = "cargo_reviews"
    __table_args__ = (UniqueConstraint("workload_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    is_complaint: Mapped[bool] = mapped_column(server_default="false")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
