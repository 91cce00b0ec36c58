"""Tables of the compute exchange (billing context): market snapshots."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, func
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base


class MarketSnapshot(Base):
    __tablename__ = "market_snapshots"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"))
    avg_ask: Mapped[Decimal | None]
    min_ask: Mapped[Decimal | None]
    max_ask: Mapped[Decimal | None]
    clearing_price: Mapped[Decimal | None]
    supply: Mapped[int] = mapped_column(Integer, server_default="0")
    demand: Mapped[int] = mapped_column(Integer, server_default="0")
    jobs_cleared: Mapped[int] = mapped_column(Integer, server_default="0")
    taken_at: Mapped[datetime] = mapped_column(server_default=func.now())


Index("ix_market_snapshots_workload_taken", MarketSnapshot.workload_id, MarketSnapshot.taken_at)
