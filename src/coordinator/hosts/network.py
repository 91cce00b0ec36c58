"""The public network statistics a landing page polls: Islands online, their regions, jobs completed.

One aggregate query, cached per process (`NETWORK_STATS_TTL_SECONDS`): a page polling every 30 s costs
the database one query per replica per interval, whatever the number of visitors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

NETWORK_STATS_TTL_SECONDS = 15.0

# Online, approved Islands heard from within the heartbeat timeout, their regions, and succeeded jobs
# (through the partial index on completed_at).
NETWORK_STATS_SQL = text(
    """
    WITH online AS (
        SELECT region FROM hosts
        WHERE status = 'online' AND approved AND suspended_at IS NULL
          AND last_heartbeat_at > now() - make_interval(secs => :timeout)
    )
    SELECT (SELECT count(*) FROM online),
           (SELECT count(DISTINCT region) FROM online WHERE region IS NOT NULL),
           (SELECT count(*) FROM jobs WHERE completed_at IS NOT NULL AND state = 'succeeded')
    """
)


@dataclass(frozen=True)
class NetworkStats:
    online_islands: int
    regions: int
    jobs_completed: int


async def network_stats(session: AsyncSession, heartbeat_timeout: float) -> NetworkStats:
    row = (await session.execute(NETWORK_STATS_SQL, {"timeout": heartbeat_timeout})).one()
    return NetworkStats(int(row[0]), int(row[1]), int(row[2]))


class CachedNetworkStats:
    """The aggregate, recomputed at most once per `ttl` seconds (concurrent callers share one query)."""

    def __init__(self, ttl: float = NETWORK_STATS_TTL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._value: tuple[float, NetworkStats] | None = None
        self._lock = asyncio.Lock()

    async def get(self, compute: Callable[[], Awaitable[NetworkStats]]) -> NetworkStats:
        if self._value is not None and self.clock() - self._value[0] < self.ttl:
            return self._value[1]  # the common case: no lock, no database
        async with self._lock:
            if self._value is not None and self.clock() - self._value[0] < self.ttl:
                return self._value[1]
            stats = await compute()
            self._value = (self.clock(), stats)
            return stats

    def clear(self) -> None:
        """Forget the aggregate: the next `get` computes it again."""
        self._value = None
