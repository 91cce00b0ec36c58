"""Karma: the pending-minutes rules (worked examples + properties) and the service against PostgreSQL."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from coordinator.karma import rules, service
from coordinator.karma.rules import KarmaPolicy, KarmaState
from coordinator.runtime import Runtime
from tests.factories import make_consumer

POLICY = KarmaPolicy()

# (karma before, pending before, job minutes) -> (karma after, pending after), from domain-rules.
WORKED_EXAMPLES = [
    ((0, 0, 25), (0, 37)),  # the worked example: 25 × 1.5 = 37.5, floored → 37 pending
    ((0, 0, 40), (1, 0)),  # 40 × 1.5 = 60 → one karma, nothing left over
    ((0, 37, 25), (1, 14)),  # 37 + 37 = 74 → 1 karma, 14 pending
    ((0, 0, 1), (0, 1)),  # 1.5 floored → 1
    ((0, 0, 0), (0, 0)),
    ((9, 50, 10), (10, 5)),  # below threshold: 10 × 1.5 = 15 → 65 → karma 10, 5 pending
    ((10, 0, 25), (10, 25)),  # at the threshold no multiplier
    ((10, 50, 10), (11, 0)),
    ((12, 0, 185), (15, 5)),  # 185 minutes → 3 karma, 5 left
    ((0, 0, 200), (5, 0)),  # 300 effective → 5 karma
    ((-3, 0, 40), (-2, 0)),  # a penalised Island recovers with the multiplier too
]


@pytest.mark.parametrize(("before", "after"), WORKED_EXAMPLES)
def test_worked_examples(before: tuple[int, int, int], after: tuple[int, int]) -> None:
    karma, pending, minutes = before
    outcome = rules.apply_success(KarmaState(karma, pending), minutes * 60, POLICY)
    assert (outcome.after.karma, outcome.after.pending_minutes) == after


def test_effective_minutes_are_floored_from_seconds() -> None:
    assert rules.effective_minutes(89, 0, POLICY) == 2  # 1.483 min × 1.5 = 2.225
    assert rules.effective_minutes(119, 10, POLICY) == 1  # no multiplier at the threshold
    assert rules.effective_minutes(-5, 0, POLICY) == 0


def test_metro_policy_overrides_every_constant() -> None:
    metro = KarmaPolicy(minutes_per_karma=30, recovery_multiplier=Decimal(2), monetization_threshold=5)
    outcome = rules.apply_success(KarmaState(4, 0), 25 * 60, metro)
    assert (outcome.after.karma, outcome.after.pending_minutes) == (5, 20)
    assert rules.is_monetizable(5, metro) and not rules.is_monetizable(5, POLICY)


@given(
    karma=st.integers(-20, 40),
    pending=st.integers(0, 59),
    seconds=st.integers(0, 50_000),
)
def test_success_conserves_minutes(karma: int, pending: int, seconds: int) -> None:
    outcome = rules.apply_success(KarmaState(karma, pending), seconds, POLICY)
    after = outcome.after
    assert 0 <= after.pending_minutes < POLICY.minutes_per_karma
    assert after.karma >= karma
    # every effective minute is accounted for: as karma (×60) or still pending
    assert (after.karma - karma) * 60 + after.pending_minutes == pending + outcome.effective_minutes
    mult = POLICY.recovery_multiplier if karma < POLICY.monetization_threshold else 1
    assert outcome.effective_minutes == int(Decimal(seconds) / 60 * mult)


async def _host(runtime: Runtime, region: str | None = None, owner_id: int | None = None) -> uuid.UUID:
    host_id = uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO hosts (id, region, owner_id) VALUES (:h, :r, :o)"),
            {"h": host_id, "r": region, "o": owner_id},
        )
    return host_id


async def _job(runtime: Runtime, user_id: int) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO workloads (slug, name) VALUES ('k', 'k') ON CONFLICT (slug) DO NOTHING")
        )
        await session.execute(
            text(
                "INSERT INTO jobs (id, user_id, workload_id, input) "
                "SELECT :j, :u, id, '{}'::jsonb FROM workloads WHERE slug = 'k'"
            ),
            {"j": job_id, "u": user_id},
        )
    return job_id


async def test_record_success_writes_the_worked_example_and_an_event(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime)
    host_id = await _host(runtime)
    job_id = await _job(runtime, consumer.user.id)
    for _ in range(2):  # a duplicated success is recorded once
        async with runtime.db.transaction() as session:
            change = await service.record_success(session, host_id, job_id, 25 * 60)
    assert (change.karma, change.pending_minutes, change.recorded) == (0, 37, False)
    async with runtime.db.session() as session:
        row = (
            await session.execute(
                text("SELECT karma, pending_minutes FROM hosts WHERE id=:h"), {"h": host_id}
            )
        ).one()
        events = (
            await session.execute(
                text("SELECT event_type, delta, balance_after FROM karma_events WHERE host_id=:h"),
                {"h": host_id},
            )
        ).all()
    assert tuple(row) == (0, 37)
    assert [tuple(e) for e in events] == [("job_succeeded", 0, 0)]


async def test_metro_settings_apply_to_hosts_in_the_region(runtime: Runtime) -> None:
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO metro_settings (region, minutes_per_karma, recovery_multiplier, "
                "monetization_threshold) VALUES ('eu-west', 10, 1, 3)"
            )
        )
    host_id = await _host(runtime, region="eu-west")
    async with runtime.db.transaction() as session:
        change = await service.record_success(session, host_id, None, 25 * 60)
        summary = await service.karma_summary(session, host_id)
    assert (change.karma, change.pending_minutes, change.delta) == (2, 5, 2)
    assert summary == {
        "host_id": str(host_id),
        "karma": 2,
        "pending_minutes": 5,
        "monetizable": False,
        "threshold": 3,
    }


async def test_penalties_write_balance_after_and_flag_impersonation(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime)
    host_id = await _host(runtime)
    jobs = [await _job(runtime, consumer.user.id) for _ in range(4)]
    async with runtime.db.transaction() as session:
        await service.record_success(session, host_id, None, 40 * 60)  # karma 1
        await service.penalize(session, host_id, "job_failed", job_id=jobs[0])
        await service.penalize(session, host_id, "lease_expired", job_id=jobs[1])
        await service.penalize(session, host_id, "lease_expired", job_id=jobs[1])  # duplicate: no-op
        await service.penalize(session, host_id, "timeout", job_id=jobs[2])
        change = await service.penalize(session, host_id, "impersonation", job_id=jobs[3])
    assert change.karma == 1 - 1 - 2 - 1 - 5
    async with runtime.db.session() as session:
        events = (
            await session.execute(
                text(
                    "SELECT event_type, delta, balance_after FROM karma_events WHERE host_id=:h ORDER BY id"
                ),
                {"h": host_id},
            )
        ).all()
        flagged = (
            await session.execute(text("SELECT flagged_for_review FROM hosts WHERE id=:h"), {"h": host_id})
        ).scalar_one()
    assert [tuple(e) for e in events] == [
        ("job_succeeded", 1, 1),
        ("job_failed", -1, 0),
        ("lease_expired", -2, -2),
        ("timeout", -1, -3),
        ("impersonation", -5, -8),
    ]
    assert flagged is True


async def test_karma_endpoints(runtime: Runtime, http: httpx.AsyncClient) -> None:
    consumer = await make_consumer(runtime)
    host_id = await _host(runtime)
    async with runtime.db.transaction() as session:
        for _ in range(10):
            await service.record_success(session, host_id, None, 60 * 60)
    r = await http.get(f"/api/v1/hosts/{host_id}/karma", headers=consumer.headers)
    assert r.status_code == 200
    assert r.json()["data"] == {
        "host_id": str(host_id),
        # seven jobs at ×1.5 (90 effective minutes) reach karma 10 with 30 pending; three more at ×1
        "karma": 13,
        "pending_minutes": 30,
        "monetizable": True,
        "threshold": 10,
    }
    r = await http.get(f"/api/v1/hosts/{host_id}/karma/history?limit=3", headers=consumer.headers)
    assert r.status_code == 200
    assert [e["balance_after"] for e in r.json()["data"]] == [13, 12, 11]
    assert (
        await http.get(f"/api/v1/hosts/{uuid.uuid4()}/karma", headers=consumer.headers)
    ).status_code == 404
    assert (await http.get(f"/api/v1/hosts/{host_id}/karma")).status_code == 401


async def test_karma_history_shows_job_ids_only_to_their_owners(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    owner = await make_consumer(runtime, "owner@example.com")
    stranger = await make_consumer(runtime, "stranger@example.com")
    admin = await make_consumer(runtime, "admin@example.com", admin=True)
    host_id = await _host(runtime)
    owners_job, strangers_job = await _job(runtime, owner.user.id), await _job(runtime, stranger.user.id)
    async with runtime.db.transaction() as session:
        await service.penalize(session, host_id, "job_failed", job_id=owners_job)
        await service.penalize(session, host_id, "timeout", job_id=strangers_job)

    async def job_ids(headers: dict[str, str]) -> dict[str, str | None]:
        r = await http.get(f"/api/v1/hosts/{host_id}/karma/history", headers=headers)
        assert r.status_code == 200
        return {e["event_type"]: e["job_id"] for e in r.json()["data"]}

    assert await job_ids(owner.headers) == {"job_failed": str(owners_job), "timeout": None}
    assert await job_ids(stranger.headers) == {"job_failed": None, "timeout": str(strangers_job)}
    assert await job_ids(admin.headers) == {"job_failed": str(owners_job), "timeout": str(strangers_job)}
