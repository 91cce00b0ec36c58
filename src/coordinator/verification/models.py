"""Tables of the verification context. Only the verified name, country and status are kept."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base, Timestamps


class Verification(Timestamps, Base):
    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # pending, verified, rejected
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    provider: Mapped[str] = mapped_column(String(30), server_default="builtin")
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    verified_name: Mapped[str | None] = mapped_column(String(300))
    country: Mapped[str | None] = mapped_column(String(2))
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    notes: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]
