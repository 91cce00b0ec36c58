"""Island liveness: the durable sweep that marks Islands offline once their heartbeats stop."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

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
