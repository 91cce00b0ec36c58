"""Minimal karma penalties for job misbehaviour (the karma context will own this; see docs/decisions)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

# Changes an Island's karma, flags it when asked, and writes the karma_events row — one statement.
PENALIZE_SQL = text(
    """
    WITH host AS (
        UPDATE hosts SET karma = karma + :delta, flagged_for_review = flagged_for_review OR :flag,
               updated_at = now()
        WHERE id = :host_id
        RETURNING id, karma
    )
    INSERT INTO karma_events (host_id, job_id, event_type, delta, balance_after, details)
    SELECT id, :job_id, :event_type, :delta, karma, :details FROM host
    RETURNING balance_after
    """
).bindparams(bindparam("details", type_=JSONB))

# Penalty amounts (domain-rules, Karma).
FAILED_JOB = -1
LEASE_EXPIRED = -2
TIMEOUT = -1
IMPERSONATION = -5


async def penalize(
    session: AsyncSession,
    host_id: uuid.UUID,
    delta: int,
    event_type: str,
    job_id: uuid.UUID | None,
    *,
    flag: bool = False,
    details: dict[str, Any] | None = None,
) -> int | None:
    """Apply a karma change to a known Island; returns its new karma, or None if the Island is unknown."""
    row = (
        await session.execute(
            PENALIZE_SQL,
            {
                "host_id": host_id,
                "job_id": job_id,
                "event_type": event_type,
                "delta": delta,
                "flag": flag,
                "details": details,
            },
        )
    ).first()
    return None if row is None else int(row[0])
