"""Island liveness: the durable sweep that marks Islands offline once their heartbeats stop."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.hosts.fleet import FleetView
from coordinator.hosts.service import sync_decisions
from coordinator.loops import LoopService
from coordinator.repo.database import Database

log = structlog.get_logger(__name__)

# Online Islands whose last heartbeat is older than the timeout go offline (HostHealth, every minute).
MARK_SILENT_OFFLINE_SQL = text(
    """
    UPDATE hosts SET status = 'offline', updated_at = now()
    WHERE status = 'online'
      AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => :timeout))
    RETURNING id
    """
)


async def mark_silent_hosts_offline(session: AsyncSession, timeout_seconds: int) -> list[uuid.UUID]:
    rows = await session.execute(MARK_SILENT_OFFLINE_SQL, {"timeout": timeout_seconds})
    return [row[0] for row in rows]


# The in-memory sweep's write: Islands this process saw go silent, unless a newer beat was flushed meanwhile.
MARK_OFFLINE_SQL = text(
    """
    UPDATE hosts SET status = 'offline'
    WHERE id = ANY(:ids) AND status = 'online'
      AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => :timeout))
    """
)


class FleetLiveness(LoopService):
    """Marks silent Islands offline within the heartbeat timeout: in memory at once, then in the database.
    The HostHealth worker stays the durable backstop when no coordinator process is watching."""

    name = "fleet-liveness"

    def __init__(self, db: Database, fleet: FleetView, *, sync_every: float | None = None) -> None:
        super().__init__()
        self.db = db
        self.fleet = fleet
        self.interval = max(0.2, min(5.0, fleet.heartbeat_timeout / 5))
        self.sync_every = (
            sync_every if sync_every is not None else max(0.5, min(5.0, fleet.heartbeat_timeout / 3))
        )
        self._synced_until: datetime | None = None
        self._next_sync = 0.0

    async def run_once(self) -> None:
        await self._mark_silent_offline()
        if time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + self.sync_every
            await self._sync_decisions()

    async def _sync_decisions(self) -> None:
        """Pick up decisions taken on other replicas (approve, suspend, resume, pair)."""
        try:
            async with self.db.session() as session:
                if self._synced_until is None:  # load_fleet read everything up to now at start-up
                    self._synced_until = (await session.execute(text("SELECT now()"))).scalar_one()
                    return
                # a small overlap: rows committed late with an earlier now() are not missed
                since = self._synced_until - timedelta(seconds=2)
                newest = await sync_decisions(session, self.fleet, since)
                self._synced_until = max(self._synced_until, newest)
        except Exception:
            log.exception("hosts.sync_decisions_failed")

    async def _mark_silent_offline(self) -> None:
        expired = self.fleet.expire_silent()
        if not expired:
            return
        log.info("hosts.offline", count=len(expired))
        try:
            async with self.db.transaction() as session:
                await session.execute(
                    MARK_OFFLINE_SQL, {"ids": expired, "timeout": float(self.fleet.heartbeat_timeout)}
                )
        except Exception:
            log.exception("hosts.mark_offline_failed", count=len(expired))
