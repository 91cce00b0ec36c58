"""Tables of the jobs context."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id"))
    # queued, assigned, running, succeeded, failed, cancelled, timeout
    state: Mapped[str] = mapped_column(String(16), server_default="queued")
    input: Mapped[dict[str, Any]]
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    host_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, server_default="3")
    region: Mapped[str | None] = mapped_column(String(50))
    budget: Mapped[Decimal] = mapped_column(server_default="0")
    charged: Mapped[Decimal] = mapped_column(server_default="0")
    refunded: Mapped[Decimal] = mapped_column(server_default="0")
    clearing_price: Mapped[Decimal | None]
    usage: Mapped[dict[str, Any] | None]
    placement: Mapped[dict[str, Any] | None]
    excluded_host_ids: Mapped[list[str]] = mapped_column(ARRAY(String(40)), server_default="{}")
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    batch_index: Mapped[int | None] = mapped_column(Integer)
    batch_config: Mapped[dict[str, Any] | None]
    # The replica that owns the job's event stream (docs/decisions/multi-replica-streaming.md).
    stream_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    settled_at: Mapped[datetime | None]
    # When the Cargo reputation events of this finished job were recorded (`marketplace/reputation.py`).
    reputation_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


Index("ix_jobs_user_created", Job.user_id, Job.created_at.desc())
Index("ix_jobs_queue", Job.priority.desc(), Job.created_at, postgresql_where=text("state = 'queued'"))
Index("ix_jobs_host_active", Job.host_id, postgresql_where=text("state IN ('assigned', 'running')"))
Index("ix_jobs_lease", Job.lease_expires_at, postgresql_where=text("state IN ('assigned', 'running')"))
Index("ix_jobs_parent", Job.parent_id, postgresql_where=text("parent_id IS NOT NULL"))
Index(
    "ix_jobs_reputation_due",
    Job.completed_at,
    postgresql_where=text("reputation_at IS NULL AND completed_at IS NOT NULL"),
)


class JobEvent(Base):
    """The ordered stream of a job as consumers see it (token, progress, image, status, ...)."""

    __tablename__ = "job_events"
    __table_args__ = (PrimaryKeyConstraint("job_id", "position"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
