"""Tables of the karma context."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base


class KarmaEvent(Base):
    __tablename__ = "karma_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    host_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    event_type: Mapped[str] = mapped_column(String(40))
    delta: Mapped[int] = mapped_column(Integer)
    balance_after: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MetroSetting(Base):
    """Per-region overrides of the karma rules."""

    __tablename__ = "metro_settings"

    region: Mapped[str] = mapped_column(String(50), primary_key=True)
    minutes_per_karma: Mapped[int] = mapped_column(Integer, server_default="60")
    recovery_multiplier: Mapped[Decimal] = mapped_column(server_default="1.5")
    monetization_threshold: Mapped[int] = mapped_column(Integer, server_default="10")


# One outcome per (Island, job, event type): a duplicated status message records nothing twice.
Index(
    "uq_karma_events_host_job_type",
    KarmaEvent.host_id,
    KarmaEvent.job_id,
    KarmaEvent.event_type,
    unique=True,
    postgresql_where=text("job_id IS NOT NULL"),
)
