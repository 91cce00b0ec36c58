"""Karma of Islands: record successes and penalties, each as a `karma_events` row next to the host's balance.

Every function runs in the caller's transaction and locks the host row, so concurrent outcomes for one Island
apply one after the other. A duplicate outcome (same host, job and event type) changes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.config import Settings
from coordinator.errors import NotFound
from coordinator.karma.rules import FLAGGING_EVENTS, PENALTIES, KarmaPolicy, KarmaState, apply_success
from coordinator.repo.raw import Sql


def locked_karma_sql(host_id: str, job_id: str, event_type: str) -> str:
    """A subquery that locks one Island's karma for the rest of the transaction and answers, as one JSON
    object, its balance, its metro overrides and whether this outcome is already recorded (duplicate status
    messages, retried settlements). The arguments are SQL expressions; also part of the success's finish
    statement (`jobs.repository._finish_sql`), which so saves this lock its own statement."""
    return f"""
        SELECT json_build_object(
                   'karma', h.karma, 'pending_minutes', h.pending_minutes,
                   'minutes_per_karma', m.minutes_per_karma,
                   'recovery_multiplier', CAST(m.recovery_multiplier AS text),
                   'monetization_threshold', m.monetization_threshold,
                   'duplicate', EXISTS (SELECT 1 FROM karma_events e WHERE e.host_id = h.id
                                        AND e.job_id = {job_id} AND e.event_type = {event_type}))
        FROM hosts h LEFT JOIN metro_settings m ON m.region = h.region
        WHERE h.id = {host_id}
        FOR NO KEY UPDATE OF h
    """


LOCK_HOST_KARMA_SQL = text(locked_karma_sql(":host_id", "CAST(:job_id AS uuid)", ":event_type"))

# The same, without the lock (the read-only karma view).
READ_HOST_KARMA_SQL = text(
    """
    SELECT h.karma, h.pending_minutes, h.region,
           m.minutes_per_karma, m.recovery_multiplier, m.monetization_threshold
    FROM hosts h LEFT JOIN metro_settings m ON m.region = h.region
    WHERE h.id = :host_id
    """
)


# Writes the new balance and the event that explains it. The two parts are also those of the success's
# settlement statement (`billing.settlement.SETTLE_SUCCESS_SQL`), which updates the Island's row once for
# its earnings and its karma (a statement can change a row only once).
KARMA_SET = "karma = :karma, pending_minutes = :pending, flagged_for_review = flagged_for_review OR :flag"


def karma_event_sql(rows: str, host_id: str) -> str:
    """The `karma_events` row of a karma write, from `rows` (an UPDATE of the Island returning `karma`)."""
    return f"""
        INSERT INTO karma_events (host_id, job_id, event_type, delta, balance_after, details)
        SELECT {host_id}, :job_id, :event_type, :delta, karma, CAST(:details AS jsonb) FROM {rows}
    """


SET_KARMA_SQL = text(
    f"""
    WITH upd AS (UPDATE hosts SET {KARMA_SET} WHERE id = :host_id RETURNING karma)
    {karma_event_sql("upd", ":host_id")}
    RETURNING id
    """
)


@dataclass(frozen=True)
class KarmaChange:
    host_id: uuid.UUID
    event_type: str
    delta: int
    karma: int
    pending_minutes: int
    recorded: bool  # False when the outcome was a duplicate


# The session `info` key of the process's network-wide karma policy (`Database(info=...)`, set by
# `app.build_runtime`): what a success's karma counts with where no metro setting overrides it.
POLICY_INFO = "karma_policy"


def policy_from_settings(settings: Settings) -> KarmaPolicy:
    return KarmaPolicy(
        minutes_per_karma=settings.karma_minutes_per_karma,
        recovery_multiplier=Decimal(str(settings.karma_recovery_multiplier)),
        monetization_threshold=settings.karma_monetization_threshold,
    )


def _policy(state: Mapping[str, Any], defaults: KarmaPolicy) -> KarmaPolicy:
    minutes, multiplier = state["minutes_per_karma"], state["recovery_multiplier"]
    threshold = state["monetization_threshold"]
    return KarmaPolicy(
        minutes_per_karma=minutes if minutes is not None else defaults.minutes_per_karma,
        recovery_multiplier=Decimal(multiplier) if multiplier is not None else defaults.recovery_multiplier,
        monetization_threshold=threshold if threshold is not None else defaults.monetization_threshold,
    )


async def _lock(session: Sql, host_id: uuid.UUID, job_id: uuid.UUID | None, event: str) -> Mapping[str, Any]:
    """The Island's karma state (`locked_karma_sql`), its row locked; `duplicate` when this job's `event`
    is recorded already (a NULL job never is)."""
    params = {"host_id": host_id, "job_id": job_id, "event_type": event}
    state = (await session.execute(LOCK_HOST_KARMA_SQL, params)).scalar()
    if state is None:
        raise NotFound("Island not found")
    return cast(Mapping[str, Any], state)


def _write_params(
    event_type: str, before: KarmaState, after: KarmaState, *, flag: bool = False, details: str = "{}"
) -> dict[str, Any]:
    """The parameters of `KARMA_SET` and `karma_event_sql` (the host and job ids are the statement's)."""
    return {
        "event_type": event_type,
        "karma": after.karma,
        "pending": after.pending_minutes,
        "delta": after.karma - before.karma,
        "flag": flag,
        "details": details,
    }


async def _write(
    session: Sql,
    host_id: uuid.UUID,
    job_id: uuid.UUID | None,
    event_type: str,
    before: KarmaState,
    after: KarmaState,
    *,
    flag: bool = False,
) -> None:
    params = _write_params(event_type, before, after, flag=flag)
    await session.execute(SET_KARMA_SQL, {"host_id": host_id, "job_id": job_id, **params})


def success_write(
    host_id: uuid.UUID, state: Mapping[str, Any], duration_seconds: float, defaults: KarmaPolicy | None = None
) -> tuple[KarmaChange, dict[str, Any] | None]:
    """A success's karma from the Island's locked state (`locked_karma_sql` for this job and
    `job_succeeded`): the change, and the parameters of its write (None for a duplicate: nothing to write).
    """
    before = KarmaState(karma=state["karma"], pending_minutes=state["pending_minutes"])
    if state["duplicate"]:
        return KarmaChange(host_id, "job_succeeded", 0, before.karma, before.pending_minutes, False), None
    outcome = apply_success(before, duration_seconds, _policy(state, defaults or KarmaPolicy()))
    details = json.dumps({"effective_minutes": outcome.effective_minutes, "seconds": float(duration_seconds)})
    after = outcome.after
    change = KarmaChange(host_id, "job_succeeded", outcome.delta, after.karma, after.pending_minutes, True)
    return change, _write_params("job_succeeded", before, after, details=details)


async def record_success(
    session: Sql,
    host_id: uuid.UUID,
    job_id: uuid.UUID | None,
    duration_seconds: float,
    *,
    defaults: KarmaPolicy | None = None,
) -> KarmaChange:
    """Credit an Island with a successful job's minutes (metro rules apply); writes `job_succeeded`. (A
    job's success does it within its settlement statement: `success_write`.)"""
    state = await _lock(session, host_id, job_id, "job_succeeded")
    change, write = success_write(host_id, state, duration_seconds, defaults)
    if write is not None:
        await session.execute(SET_KARMA_SQL, {"host_id": host_id, "job_id": job_id, **write})
    return change


async def penalize(
    session: Sql,
    host_id: uuid.UUID,
    event_type: str,
    delta: int | None = None,
    job_id: uuid.UUID | None = None,
    flag: bool | None = None,
) -> KarmaChange:
    """Take karma from an Island (failed −1, lease_expired −2, timeout −1, impersonation −5 + review flag).

    `delta` and `flag` default to the rule for `event_type`; karma may go below zero (a negative balance is
    the honest record of a misbehaving Island, and placement scores it last)."""
    amount = PENALTIES.get(event_type, -1) if delta is None else -abs(delta)
    flagged = (event_type in FLAGGING_EVENTS) if flag is None else flag
    state = await _lock(session, host_id, job_id, event_type)
    before = KarmaState(karma=state["karma"], pending_minutes=state["pending_minutes"])
    if state["duplicate"]:
        return KarmaChange(host_id, event_type, 0, before.karma, before.pending_minutes, False)
    after = KarmaState(karma=before.karma + amount, pending_minutes=before.pending_minutes)
    await _write(session, host_id, job_id, event_type, before, after, flag=flagged)
    return KarmaChange(host_id, event_type, amount, after.karma, after.pending_minutes, True)


async def karma_summary(
    session: AsyncSession, host_id: uuid.UUID, *, defaults: KarmaPolicy | None = None
) -> dict[str, Any]:
    """The public view of an Island's karma (`GET /api/v1/hosts/{id}/karma`)."""
    row = (await session.execute(READ_HOST_KARMA_SQL, {"host_id": host_id})).first()
    if row is None:
        raise NotFound("Island not found")
    policy = _policy(dict(row._mapping), defaults or KarmaPolicy())
    return {
        "host_id": str(host_id),
        "karma": row[0],
        "pending_minutes": row[1],
        "monetizable": row[0] >= policy.monetization_threshold,
        "threshold": policy.monetization_threshold,
    }


# The newest karma events of one Island.
# An Island's karma events, newest first. A job id is shown only to that job's owner (`:viewer`; NULL =
# an admin, who sees every id): the jobs an Island ran belong to other people.
KARMA_HISTORY_SQL = text(
    """
    SELECT k.id,
           CASE WHEN CAST(:viewer AS bigint) IS NULL OR j.user_id = :viewer THEN k.job_id END,
           k.event_type, k.delta, k.balance_after, k.details, k.created_at
    FROM karma_events k LEFT JOIN jobs j ON j.id = k.job_id
    WHERE k.host_id = :host_id ORDER BY k.id DESC LIMIT :limit
    """
)


async def karma_history(
    session: AsyncSession, host_id: uuid.UUID, limit: int = 100, *, viewer_id: int | None
) -> list[dict[str, Any]]:
    """The events behind an Island's karma; `viewer_id` None for an admin (every job id shown)."""
    if (await session.execute(text("SELECT 1 FROM hosts WHERE id = :h"), {"h": host_id})).first() is None:
        raise NotFound("Island not found")
    rows = (
        await session.execute(KARMA_HISTORY_SQL, {"host_id": host_id, "limit": limit, "viewer": viewer_id})
    ).all()
    return [
        {
            "id": r[0],
            "job_id": None if r[1] is None else str(r[1]),
            "event_type": r[2],
            "delta": r[3],
            "balance_after": r[4],
            "details": r[5],
            "inserted_at": r[6].isoformat(),
        }
        for r in rows
    ]
