"""The API key cache (`accounts/principals.py`): a key used again within a second is not read again, and
what must show at once does — on this replica and, over NATS, on the others; what a process without the
cache writes shows within the TTL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import nats
from sqlalchemy import text

from coordinator.accounts import service as accounts
from coordinator.accounts.principals import Eviction
from coordinator.nats import principals as bus
from coordinator.repo.base import utcnow
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics
from tests.factories import make_consumer
from tests.islands_support import eventually, running_coordinator
from tests.job_support import statements_of


def _key_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if "FROM api_keys" in s]


async def test_a_key_used_again_within_the_ttl_is_not_read_again(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(runtime)
    with statements_of(runtime) as first:
        assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
    with statements_of(runtime) as second:
        assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
    assert _key_reads(first) and not _key_reads(second), second
    assert not [s for s in second if "UPDATE api_keys" in s]  # the use was recorded by the first read
    await asyncio.sleep(runtime.principals.ttl)
    with statements_of(runtime) as later:
        assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
    assert _key_reads(later)


async def test_the_account_balance_is_read_now_not_from_the_cached_principal(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(runtime)
    before = (await http.get("/api/v1/account", headers=consumer.headers)).json()["data"]["credits"]
    async with runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE users SET credits = credits - 7 WHERE id = :u"), {"u": consumer.user.id}
        )
    after = (await http.get("/api/v1/account", headers=consumer.headers)).json()["data"]["credits"]
    assert after == before - 7


async def test_a_revoked_key_is_refused_at_its_very_next_request(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(runtime)
    created = await http.post("/api/v1/api-keys", headers=consumer.headers, json={"name": "second"})
    second = created.json()["data"]
    headers = {"Authorization": f"Bearer {second['key']}"}
    assert (await http.get("/api/v1/jobs", headers=headers)).status_code == 200  # cached now
    revoked = await http.delete(f"/api/v1/api-keys/{second['id']}", headers=consumer.headers)
    assert revoked.status_code == 200
    assert (await http.get("/api/v1/jobs", headers=headers)).status_code == 401
    assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200  # the other key


async def test_a_ban_refuses_the_user_at_once_and_a_rollback_evicts_nothing(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(runtime)
    assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
    key_digest = accounts.digest(runtime.settings.secret_key, consumer.key)
    try:
        async with runtime.db.transaction() as session:
            await accounts.set_banned(session, consumer.user.id, True, "spam")
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert runtime.principals.get(key_digest) is not None  # nothing committed, nothing forgotten
    async with runtime.db.transaction() as session:
        await accounts.set_banned(session, consumer.user.id, True, "spam")
    assert runtime.principals.get(key_digest) is None
    assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 401


async def test_a_cached_key_past_its_expiry_is_refused(runtime: Runtime, http: httpx.AsyncClient) -> None:
    consumer = await make_consumer(runtime)
    async with runtime.db.transaction() as session:
        _, token = await accounts.create_api_key(
            session,
            runtime.settings.secret_key,
            consumer.user,
            "short",
            expires_at=utcnow() + timedelta(seconds=0.4),
        )
    headers = {"Authorization": f"Bearer {token}"}
    assert (await http.get("/api/v1/jobs", headers=headers)).status_code == 200
    await asyncio.sleep(0.5)  # inside the cache's second, past the key's expiry
    assert (await http.get("/api/v1/jobs", headers=headers)).status_code == 401


async def test_a_revocation_written_outside_the_coordinator_shows_within_the_ttl(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    consumer = await make_consumer(runtime)
    assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
    async with runtime.db.transaction() as session:  # as psql would: no eviction is said
        await session.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE user_id = :u"), {"u": consumer.user.id}
        )
    await asyncio.sleep(runtime.principals.ttl)
    assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 401


async def test_an_eviction_on_one_replica_reaches_the_others(database_url: str, nats_url: str) -> None:
    async with (
        running_coordinator(database_url, nats_url) as one,
        running_coordinator(database_url, nats_url) as two,
    ):
        consumer = await make_consumer(one)
        key_digest = accounts.digest(two.settings.secret_key, consumer.key)
        two.principals.ttl = 60  # longer than the settings allow: only the broadcast can make it forget
        async with httpx.AsyncClient(base_url=two.base_url, timeout=30) as http:
            assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
        assert two.principals.get(key_digest) is not None
        async with one.db.read() as session:
            (key_id,) = (
                await session.execute(
                    text("SELECT id FROM api_keys WHERE user_id = :u"), {"u": consumer.user.id}
                )
            ).one()
        async with one.db.transaction() as session:  # revoked through replica one
            await accounts.revoke_api_key(session, consumer.user.id, str(key_id))
        await eventually(lambda: asyncio.sleep(0, two.principals.get(key_digest) is None), within=2)


async def test_a_malformed_eviction_is_counted_and_harmless(database_url: str, nats_url: str) -> None:
    malformed = metrics.nats_malformed.labels(subject_class="principals")
    before = malformed._value.get()
    async with running_coordinator(database_url, nats_url) as runtime:
        consumer = await make_consumer(runtime)
        runtime.principals.ttl = 60  # only an eviction makes it forget
        key_digest = accounts.digest(runtime.settings.secret_key, consumer.key)
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as http:
            assert (await http.get("/api/v1/jobs", headers=consumer.headers)).status_code == 200
        nc = await nats.connect(nats_url)
        try:
            for data in (b"{", b"[]", b'{"from": "x"}', b'{"from": "x", "user_id": "1"}'):
                await nc.publish(bus.SUBJECT, data)
            await nc.publish(bus.SUBJECT, bus.encode(Eviction(user_id=consumer.user.id), "elsewhere"))
            await nc.flush()
        finally:
            await nc.close()
        await eventually(lambda: asyncio.sleep(0, runtime.principals.get(key_digest) is None), within=2)
        assert malformed._value.get() == before + 4  # each bad one counted; the good one after them applied
