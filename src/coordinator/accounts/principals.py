"""Bearer keys → principals, remembered for at most a second.

Every API request names its key, and reading the key with its user is a statement and two ORM rows per
request. `PrincipalCache` keeps an authenticated principal for `ttl` seconds
(`COORDINATOR_API_KEY_CACHE_SECONDS`, at most 1; 0 turns it off) and forgets it at once where keeping it
would be wrong:

- a transaction that revokes a key, bans or unbans a user, or changes their role or verification status
  says so (`evict_on_commit`); when it commits, this process's cache forgets the key or every key of the
  user and tells its `on_evict` listeners (the NATS child, `nats/principals.py`: every other replica);
- writes made by another process without a cache (the worker, `coordinator admin`, psql) show within
  the TTL.

Only a positive answer is cached: an unknown, revoked or expired key is read every time. A cached key
past its `expires_at` is refused. The principal's user row is as of its read: what changes on its own
(the balance) is read fresh where it is shown (`/api/v1/account`, the account page)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.repo import raw
from coordinator.repo.base import utcnow

if TYPE_CHECKING:
    from coordinator.accounts.service import Principal

log = structlog.get_logger(__name__)

MAX_TTL_SECONDS = 1.0
# The session's `info` key of the evictions its transaction will make, and of the cache they go to
# (`Database(info=...)` puts the process's cache in every session's info).
_PENDING = "principal_evictions"
CACHE_INFO = "principal_cache"


@dataclasses.dataclass(frozen=True, slots=True)
class Eviction:
    """Forget one key (`key_id`) or every key of one user (`user_id`)."""

    user_id: int | None = None
    key_id: uuid.UUID | None = None


@dataclasses.dataclass(slots=True)
class _Entry:
    principal: Principal
    fresh_until: float  # time.monotonic()
    key_expires_at: datetime | None


class PrincipalCache:
    def __init__(self, ttl: float = MAX_TTL_SECONDS, limit: int = 10_000) -> None:
        self.ttl = min(max(ttl, 0.0), MAX_TTL_SECONDS)
        self.limit = limit
        self._entries: dict[str, _Entry] = {}
        self.on_evict: list[Callable[[Eviction], None]] = []

    def get(self, key_digest: str) -> Principal | None:
        entry = self._entries.get(key_digest)
        if entry is None:
            return None
        expired = entry.key_expires_at is not None and entry.key_expires_at <= utcnow()
        if expired or time.monotonic() >= entry.fresh_until:
            del self._entries[key_digest]
            return None
        return entry.principal

    def put(self, key_digest: str, principal: Principal, key_expires_at: datetime | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.limit:
            self._entries.clear()
        # The use was recorded (or is not due) for this read: a cached hit never records it again.
        remembered = dataclasses.replace(principal, key_use_due=False)
        self._entries[key_digest] = _Entry(remembered, time.monotonic() + self.ttl, key_expires_at)

    def evict(self, eviction: Eviction, *, tell: bool = True) -> None:
        """Forget what `eviction` names here; `tell`: and tell the listeners (not for one they sent)."""
        for digest, entry in list(self._entries.items()):
            principal = entry.principal
            if principal.user.id == eviction.user_id or (
                eviction.key_id is not None and principal.api_key_id == eviction.key_id
            ):
                del self._entries[digest]
        if tell:
            for listener in self.on_evict:
                try:
                    listener(eviction)
                except Exception:  # runs after a commit: the TTL still bounds the other replicas
                    log.exception("principals.evict_listener_failed")


def evict_on_commit(
    session: AsyncSession, *, user_id: int | None = None, key_id: uuid.UUID | None = None
) -> None:
    """When this session's transaction commits, the caches forget the key or the user's keys."""
    session.info.setdefault(_PENDING, []).append(Eviction(user_id=user_id, key_id=key_id))


@raw.on_commit
def _committed(info: raw.Info) -> None:
    pending: list[Eviction] = info.pop(_PENDING, [])
    cache: Any = info.get(CACHE_INFO)
    if isinstance(cache, PrincipalCache):
        for eviction in pending:
            cache.evict(eviction)


@raw.on_rollback
def _rolled_back(info: raw.Info) -> None:
    info.pop(_PENDING, None)
