"""Quotas: the per-key request limit shared through PostgreSQL, its headers, the polling allowance, and the
active-job and daily-spend limits of submission."""

from __future__ import annotations

import uuid
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import text
from starlette.requests import Request

from coordinator.accounts.service import Principal
from coordinator.billing import ledger, quotas
from coordinator.errors import RateLimited
from coordinator.runtime import Runtime
from coordinator.web import ratelimit
from tests.factories import make_consumer

COUNT_SQL = text("SELECT count FROM rate_limit_counters WHERE bucket = :bucket")


@pytest.fixture
def tight(runtime: Runtime) -> Runtime:
    runtime.settings.rate_limit_per_minute = 3
    runtime.settings.poll_rate_limit_per_minute = 5
    return runtime


async def test_every_authenticated_response_carries_the_window(
    tight: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(tight)
    r = await http.get("/api/v1/account", headers=consumer.headers)
    assert r.status_code == 200
    assert r.headers["X-RateLimit-Limit"] == "3"
    assert r.headers["X-RateLimit-Remaining"] == "2"
    assert int(r.headers["X-RateLimit-Reset"]) % 60 == 0
    # an error after authentication (404) still carries them
    r = await http.get("/api/v1/workloads/nope", headers=consumer.headers)
    assert r.status_code == 404 and r.headers["X-RateLimit-Remaining"] == "1"
    # the public market endpoints are not counted
    assert "X-RateLimit-Limit" not in (await http.get("/api/v1/market/rates")).headers


async def test_the_101st_request_gets_429_with_an_integer_retry_after(
    tight: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(tight)
    other = await make_consumer(tight, "other@example.com")
    statuses = [(await http.get("/api/v1/account", headers=consumer.headers)).status_code for _ in range(4)]
    if statuses[-1] == 200:  # the minute turned over mid-test: the new window starts again
        statuses = [
            (await http.get("/api/v1/account", headers=consumer.headers)).status_code for _ in range(4)
        ]
    assert statuses[-1] == 429
    r = await http.get("/api/v1/account", headers=consumer.headers)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"
    # another key has its own allowance
    assert (await http.get("/api/v1/account", headers=other.headers)).status_code == 200


async def test_the_counter_is_shared_by_replicas(tight: Runtime) -> None:
    """Two replicas count in memory and meet in PostgreSQL: after a flush each sees the other's requests."""
    now = [1_800_000_000.0]  # a window start, so the test cannot straddle a minute
    a, b = quotas.RateCounter(lambda: now[0]), quotas.RateCounter(lambda: now[0])
    second = Runtime.from_settings(tight.settings)

    async def flush(counter: quotas.RateCounter, rt: Runtime) -> None:
        async with rt.db.transaction() as session:
            await counter.flush(session)

    try:
        assert a.due  # the first flush forgets old windows
        await flush(a, tight)
        assert not a.due  # nothing counted, same window: the sync loop skips its transaction
        assert [a.hit("key:shared", 3).count for _ in range(2)] == [1, 2]
        assert a.due
        assert b.hit("key:shared", 3).count == 1  # B has not heard of A's requests yet
        await flush(a, tight)
        await flush(b, second)
        assert b.hit("key:shared", 3).count == 4  # A's two, B's flushed one, this one
        assert b.hit("key:shared", 3).exceeded
        assert a.hit("key:shared", 3).count == 3  # A learns B's count at its next flush
        await flush(a, tight)
        assert a.hit("key:shared", 3).count == 5  # B's last two requests are still pending in B
        async with tight.db.session() as session:
            stored = await session.scalar(COUNT_SQL, {"bucket": "key:shared"})
        assert stored == 4  # every request flushed so far, each once
        now[0] += 60  # a new minute starts from zero
        assert a.hit("key:shared", 3).count == 1
    finally:
        await second.db.dispose()


async def test_requests_counted_during_a_flush_are_not_lost(tight: Runtime) -> None:
    counter = quotas.RateCounter(lambda: 1_800_000_000.0)
    counter.hit("key:k", 100)

    class Racing:
        """A session whose statement lets another request in while it runs."""

        async def execute(self, statement: object, params: object = None) -> object:
            if statement is quotas.ADD_COUNTS_SQL:
                counter.hit("key:k", 100)
            async with tight.db.transaction() as session:
                return await session.execute(statement, params)  # type: ignore[arg-type]

    await counter.flush(Racing())  # type: ignore[arg-type]
    assert counter.hit("key:k", 100).count == 3
    async with tight.db.transaction() as session:
        await counter.flush(session)
        assert await session.scalar(COUNT_SQL, {"bucket": "key:k"}) == 3


def _request(method: str, path: str, runtime: Runtime) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(runtime=runtime))
    return Request({"type": "http", "method": method, "path": path, "headers": [], "app": app})


async def test_polling_a_job_has_its_own_allowance(tight: Runtime) -> None:
    consumer = await make_consumer(tight)
    principal = Principal(consumer.user, frozenset({"read"}), uuid.uuid4())
    job = f"/api/v1/jobs/{uuid.uuid4()}"
    for path in (job, job + "/batch-status"):
        assert ratelimit.bucket_for(_request("GET", path, tight), principal)[1] is True
    for method, path in (("POST", job), ("GET", "/api/v1/jobs"), ("GET", job + "/stream")):
        assert ratelimit.bucket_for(_request(method, path, tight), principal)[1] is False
    for _ in range(5):  # five polls pass although the general limit is 3
        await ratelimit.enforce(_request("GET", job, tight), principal)
    with pytest.raises(RateLimited):
        await ratelimit.enforce(_request("GET", job, tight), principal)
    general = _request("GET", "/api/v1/account", tight)
    await ratelimit.enforce(general, principal)  # the general bucket is untouched by polling
    assert general.state.rate_limit.limit == 3


async def _active_jobs(runtime: Runtime, user_id: int, n: int, state: str = "queued") -> None:
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO workloads (slug, name) VALUES ('q', 'q') ON CONFLICT DO NOTHING")
        )
        for _ in range(n):
            await session.execute(
                text(
                    "INSERT INTO jobs (id, user_id, workload_id, input, state) "
                    "SELECT gen_random_uuid(), :u, id, '{}'::jsonb, :s FROM workloads WHERE slug = 'q'"
                ),
                {"u": user_id, "s": state},
            )


async def test_active_job_limits_depend_on_verification(runtime: Runtime) -> None:
    limits = quotas.QuotaLimits(active_jobs_unverified=2, active_jobs_verified=3)
    consumer = await make_consumer(runtime)
    user = consumer.user
    await _active_jobs(runtime, user.id, 5, state="succeeded")  # finished jobs do not count
    await _active_jobs(runtime, user.id, 1)
    async with runtime.db.session() as session:
        await quotas.check_submit_quota(session, user, Decimal(1), limits=limits)
    await _active_jobs(runtime, user.id, 1, state="running")
    async with runtime.db.session() as session:
        with pytest.raises(RateLimited) as refused:
            await quotas.check_submit_quota(session, user, Decimal(1), limits=limits)
    assert refused.value.code == "too_many_active_jobs" and "2 of 2" in refused.value.message
    user.verification_status = "verified"
    async with runtime.db.session() as session:
        await quotas.check_submit_quota(session, user, Decimal(1), limits=limits)


async def test_unverified_daily_spend_cap(runtime: Runtime) -> None:
    limits = quotas.QuotaLimits(daily_spend_unverified=Decimal(100))
    consumer = await make_consumer(runtime)
    user = consumer.user
    async with runtime.db.transaction() as session:
        await ledger.debit(session, user.id, Decimal(90))
        await ledger.credit(session, user.id, Decimal(20), type="refund")  # net spend 70
        await quotas.check_submit_quota(session, user, Decimal(30), limits=limits)
        with pytest.raises(RateLimited) as refused:
            await quotas.check_submit_quota(session, user, Decimal("30.5"), limits=limits)
    assert refused.value.code == "daily_spend_limit"
    assert "spent 70 of 100" in refused.value.message and refused.value.retry_after >= 1
    user.verification_status = "verified"
    async with runtime.db.session() as session:
        await quotas.check_submit_quota(session, user, Decimal(10_000), limits=limits)


async def test_hourly_buckets_outlive_the_minute_windows(tight: Runtime) -> None:
    """`h:` buckets (keyless limits such as magic links per e-mail) count over an hour: neither this
    replica's memory nor the once-a-minute prune forgets them when a minute ends."""
    now = [1_800_000_000.0]  # an hour start
    counter = quotas.RateCounter(lambda: now[0])

    async def flush() -> None:
        async with tight.db.transaction() as session:
            await counter.flush(session)

    assert counter.hit("h:mail", 3).count == 1
    await flush()
    now[0] += 600  # ten minutes later, same hour
    await flush()
    assert counter.hit("h:mail", 3).count == 2
    assert counter.count("h:mail") == 2 and counter.count("key:never") == 0
    now[0] += 3000  # the next hour starts from zero
    assert counter.hit("h:mail", 3).count == 1

    async with tight.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO rate_limit_counters (bucket, window_start, count) VALUES "
                "('h:recent-hour', now() - interval '30 minutes', 2), "
                "('key:old-minute', now() - interval '30 minutes', 2), "
                "('h:old-hour', now() - interval '3 hours', 2)"
            )
        )
        await session.execute(quotas.PRUNE_SQL)
        left = (await session.execute(text("SELECT bucket FROM rate_limit_counters"))).scalars().all()
    assert "h:recent-hour" in left and "key:old-minute" not in left and "h:old-hour" not in left
