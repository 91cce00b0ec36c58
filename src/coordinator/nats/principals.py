"""Cached principals forgotten on every replica (`accounts/principals.py`), over NATS core.

A commit that revokes a key, bans a user or changes their role or verification status makes this
process's cache forget it and publishes the eviction on `coordinator.principals.evict`; every other
replica forgets it too on receipt. A lost message costs at most the cache's TTL (≤ 1 s)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from coordinator.accounts.principals import Eviction
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import metrics

log = structlog.get_logger(__name__)

SUBJECT = "coordinator.principals.evict"


def encode(eviction: Eviction, replica: str) -> bytes:
    key = None if eviction.key_id is None else str(eviction.key_id)
    return json.dumps({"user_id": eviction.user_id, "key_id": key, "from": replica}).encode()


def decode(data: bytes) -> tuple[Eviction, str]:
    """The eviction and the replica that sent it; ValueError when the message is not one."""
    body = json.loads(data)
    if not isinstance(body, dict) or not isinstance(body.get("from"), str):
        raise ValueError("not an eviction")
    user_id, key_id = body.get("user_id"), body.get("key_id")
    if (user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, int))) or (
        user_id is None and key_id is None
    ):
        raise ValueError("not an eviction")
    return Eviction(user_id=user_id, key_id=None if key_id is None else uuid.UUID(str(key_id))), body["from"]


class PrincipalEvictionsChild(Child):
    name = "principal_evictions"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        if nc is None:
            raise RuntimeError("NATS is not connected")
        me, cache = self.runtime.pubsub.replica_id, self.runtime.principals

        async def received(msg: Any) -> None:
            try:
                eviction, sender = decode(msg.data)
            except (ValueError, TypeError):
                metrics.nats_malformed.labels(subject_class="principals").inc()
                log.warning("principals.malformed_eviction", subject=msg.subject)
                return
            if sender != me:
                cache.evict(eviction, tell=False)

        def tell(eviction: Eviction) -> None:  # called by a commit: publish without waiting
            task = asyncio.get_running_loop().create_task(nc.publish(SUBJECT, encode(eviction, me)))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

        sub = await nc.subscribe(SUBJECT, cb=received)
        cache.on_evict.append(tell)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            cache.on_evict.remove(tell)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
