"""Account events for the pages (`user:<id>` channel): job status changes, credit balance, Island status.

Published on the process's pub/sub (bridged across replicas), so a page connected to any replica sees
them. Each event is `{"event": <name>, "payload": {...}}`; positions are not meaningful (always 0): the
page reloads its view on (re)join, these only keep it current."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from coordinator.pubsub import Event
from coordinator.runtime import Runtime

JOB_UPDATED = "job_updated"
CREDITS = "credits"
ISLAND_UPDATED = "island_updated"

BALANCE_SQL = text("SELECT credits FROM users WHERE id = :id")


def user_topic(user_id: int) -> str:
    return f"user:{user_id}"


async def publish(runtime: Runtime, user_id: int, event: str, payload: dict[str, Any]) -> None:
    topic = user_topic(user_id)
    await runtime.pubsub.publish(Event.make(topic, 0, {"event": event, "payload": payload}))


async def job_updated(runtime: Runtime, user_id: int, job_id: uuid.UUID, status: str) -> None:
    await publish(runtime, user_id, JOB_UPDATED, {"id": str(job_id), "status": status})


async def credits_changed(runtime: Runtime, user_id: int, balance: Decimal | None = None) -> None:
    """The balance after a ledger movement: the one the movement returned, else read after commit."""
    if balance is None:
        async with runtime.db.read() as session:
            balance = await session.scalar(BALANCE_SQL, {"id": user_id})
    if balance is not None:
        await publish(runtime, user_id, CREDITS, {"balance": float(Decimal(balance))})


async def island_updated(runtime: Runtime, owner_id: int | None, host_id: uuid.UUID, status: str) -> None:
    if owner_id is not None:
        await publish(runtime, owner_id, ISLAND_UPDATED, {"id": str(host_id), "status": status})
