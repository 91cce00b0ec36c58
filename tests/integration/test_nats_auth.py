"""Island identity enforced by the broker (issue #18): a real nats-server with `auth_callout`, answered by
the coordinator's callout service; each test is named after an attack it shows refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from nats.js.api import AckPolicy, ConsumerConfig

from coordinator.app import HttpChild, NatsConnectionChild, build_runtime, job_children
from coordinator.devstack import EmbeddedNats, NatsAuth
from coordinator.hosts import nats_access
from coordinator.nats.auth_callout import AuthCalloutChild
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from tests.conftest import make_settings
from tests.factories import make_consumer, seed_cargos
from tests.fake_island import FakeIsland
from tests.job_stack import CHAT, JobStack, eventually, submit, wait_status
from tests.job_support import make_island

SHARED_PASSWORD = "shared-island-password"
# A request the broker refuses to forward never gets an answer (the client sees a permissions -ERR).
DENIED = (nats.errors.TimeoutError, nats.errors.NoRespondersError)


@dataclass
class AuthNats:
    server: EmbeddedNats

    @property
    def auth(self) -> NatsAuth:
        assert self.server.auth is not None
        return self.server.auth

    def url_for(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def auth_nats(tmp_root: Path) -> Iterator[AuthNats]:
    server = EmbeddedNats(tmp_root / f"nats-auth-{uuid.uuid4().hex[:6]}", auth=NatsAuth.generate())
    server.start()
    try:
        yield AuthNats(server)
    finally:
        server.stop()


@asynccontextmanager
async def auth_stack(database_url: str, auth_nats: AuthNats, **overrides: Any) -> AsyncIterator[JobStack]:
    values: dict[str, Any] = {
        "nats_url": auth_nats.server.coordinator_url,
        "nats_auth_issuer_seed": auth_nats.auth.issuer_seed,
        "nats_shared_island_password": SHARED_PASSWORD,
        "lease_sweep_interval_seconds": 0.2,
    }
    values.update(overrides)
    runtime = build_runtime(make_settings(database_url, **values))
    children = [
        NatsConnectionChild(runtime),
        AuthCalloutChild(runtime),
        *job_children(runtime),
        HttpChild(runtime),
    ]
    supervisor = Supervisor(children)
    await supervisor.start()
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            yield JobStack(runtime, client)
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


@pytest_asyncio.fixture
async def stack(database_url: str, auth_nats: AuthNats) -> AsyncIterator[JobStack]:
    async with auth_stack(database_url, auth_nats) as s:
        yield s


async def credential_for(stack: JobStack, host_id: uuid.UUID) -> str:
    """A per-Island password (the host row must exist)."""
    async with stack.runtime.db.transaction() as session:
        issued = await nats_access.issue_credential(
            session, stack.runtime.settings.secret_key, host_id, owner_id=None, actor_id=None
        )
    return issued.password


async def island_client(auth_nats: AuthNats, stack: JobStack, host_id: uuid.UUID | None = None) -> Any:
    """A connected client holding a fresh Island's own credential; also returns the errors it sees."""
    host_id = host_id or uuid.uuid4()
    await make_island(stack.runtime, host_id=host_id)
    password = await credential_for(stack, host_id)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(
        auth_nats.url_for(str(host_id), password), allow_reconnect=False, error_cb=on_error
    )
    nc.errors = errors  # type: ignore[attr-defined]
    nc.host_id = host_id  # type: ignore[attr-defined]
    return nc


async def refused(url: str) -> bool:
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
    except Exception as exc:
        return "Authorization Violation" in str(exc)
    await nc.close()
    return False


async def permission_error(nc: Any, text: str) -> Exception:
    async def seen() -> Exception | None:
        # nats-py lower-cases the server's -ERR text, subject included
        wanted = text.lower()
        return next((e for e in nc.errors if "permissions violation" in str(e) and wanted in str(e)), None)

    found: Exception = await eventually(seen, within=5)
    return found


async def test_an_anonymous_client_is_refused(stack: JobStack, auth_nats: AuthNats) -> None:
    assert await refused(auth_nats.server.url)
    assert await refused(auth_nats.url_for("not-a-host", "whatever"))
    assert await refused(auth_nats.url_for(str(uuid.uuid4()), "guessed-password"))


async def test_a_wrong_password_for_a_real_island_is_refused(stack: JobStack, auth_nats: AuthNats) -> None:
    host_id = uuid.uuid4()
    await make_island(stack.runtime, host_id=host_id)
    password = await credential_for(stack, host_id)
    assert await refused(auth_nats.url_for(str(host_id), password + "x"))
    assert not await refused(auth_nats.url_for(str(host_id), password))


async def test_island_a_cannot_publish_another_islands_status(stack: JobStack, auth_nats: AuthNats) -> None:
    a = await island_client(auth_nats, stack)
    victim = uuid.uuid4()
    watcher = await nats.connect(stack.runtime.settings.nats_url or "")
    try:
        got: list[Any] = []

        async def record(msg: Any) -> None:
            got.append(msg)

        await watcher.subscribe(f"host.{victim}.status", cb=record)
        await watcher.subscribe(f"host.{a.host_id}.status", cb=record)
        await watcher.flush()
        for suffix in ("status", "output", "lease", "heartbeat"):
            await a.publish(f"host.{victim}.{suffix}", b'{"job_id":"x","state":"succeeded"}')
        await a.publish(f"host.{a.host_id}.status", b"own")  # its own subject still works
        await a.flush()
        await permission_error(a, f"host.{victim}.status")
        await watcher.flush()

        async def own_seen() -> bool:
            await a.publish(f"host.{a.host_id}.status", b"own")
            await a.flush()
            return any(m.subject == f"host.{a.host_id}.status" for m in got)

        await eventually(own_seen)
        assert {m.subject for m in got} == {f"host.{a.host_id}.status"}  # nothing on the victim's
    finally:
        await a.close()
        await watcher.close()


async def test_island_a_cannot_subscribe_to_another_islands_jobs(
    stack: JobStack, auth_nats: AuthNats
) -> None:
    a = await island_client(auth_nats, stack)
    victim = uuid.uuid4()
    try:
        await a.subscribe(f"host.{victim}.jobs")
        await a.subscribe("host.*.jobs")
        await a.subscribe(f"host.{victim}.probe")
        await a.flush()
        await permission_error(a, f"host.{victim}.jobs")
        await permission_error(a, "host.*.jobs")
        await permission_error(a, f"host.{victim}.probe")
    finally:
        await a.close()


async def test_island_a_cannot_read_another_islands_assignments(stack: JobStack, auth_nats: AuthNats) -> None:
    a = await island_client(auth_nats, stack)
    victim = uuid.uuid4()
    js = a.jetstream(timeout=3)
    try:
        own = ConsumerConfig(
            name=f"host-{a.host_id}",
            durable_name=f"host-{a.host_id}",
            filter_subject=f"host.{a.host_id}.jobs",
            ack_policy=AckPolicy.EXPLICIT,
        )
        await js.add_consumer("JOBS", own)  # its own consumer is allowed
        theirs = ConsumerConfig(
            name=f"host-{victim}",
            durable_name=f"host-{victim}",
            filter_subject=f"host.{victim}.jobs",
            ack_policy=AckPolicy.EXPLICIT,
        )
        with pytest.raises(DENIED):
            await js.add_consumer("JOBS", theirs)
        # Its own consumer name with the victim's filter: the filter is part of the allowed API subject.
        sneaky = ConsumerConfig(
            name=f"host-{a.host_id}",
            durable_name=f"host-{a.host_id}",
            filter_subject=f"host.{victim}.jobs",
            ack_policy=AckPolicy.EXPLICIT,
        )
        with pytest.raises(DENIED):
            await js.add_consumer("JOBS", sneaky)
        legacy = ConsumerConfig(durable_name=f"host-{a.host_id}", filter_subject=f"host.{victim}.jobs")
        with pytest.raises(DENIED):  # DURABLE.CREATE: the filter only in the body, so never allowed
            await js.add_consumer("JOBS", legacy)
        with pytest.raises(DENIED):
            await js.consumer_info("JOBS", f"host-{victim}")
        await a.publish(f"$JS.API.CONSUMER.MSG.NEXT.JOBS.host-{victim}", b'{"batch":1}')
        await a.flush()
        await permission_error(a, f"MSG.NEXT.JOBS.host-{victim}")
    finally:
        await a.close()


async def test_island_a_cannot_use_the_coordinators_pubsub_or_forwarding_subjects(
    stack: JobStack, auth_nats: AuthNats
) -> None:
    from coordinator.nats.job_bus import DISPATCH_WAKE
    from coordinator.nats.stream_router import sink_subject
    from coordinator.pubsub import PRESENCE_SUBJECT, SUBJECT_PREFIX, topic_subject

    a = await island_client(auth_nats, stack)
    try:
        # (A forged hello would make every replica publish its events on the bridge for nobody.)
        targets = [topic_subject("job:123"), sink_subject("replica-1"), DISPATCH_WAKE, PRESENCE_SUBJECT]
        for subject in targets:
            await a.publish(subject, b'{"event":"done"}')
        await a.subscribe(f"{SUBJECT_PREFIX}.>")
        await a.flush()
        for subject in targets:
            await permission_error(a, subject)
        await permission_error(a, f"{SUBJECT_PREFIX}.>")
    finally:
        await a.close()


async def test_island_a_cannot_create_or_delete_streams(stack: JobStack, auth_nats: AuthNats) -> None:
    a = await island_client(auth_nats, stack)
    js = a.jetstream(timeout=3)
    try:
        with pytest.raises(DENIED):
            await js.add_stream(name="EVIL", subjects=["evil.>"])
        with pytest.raises(DENIED):
            await js.delete_stream("JOBS")
        with pytest.raises(DENIED):
            await js.purge_stream("JOBS")
        with pytest.raises(DENIED):
            await js.delete_consumer("JOB_STATUS", "coordinator-status")
        coordinator_js = stack.runtime.nats.jetstream()
        assert (await coordinator_js.stream_info("JOBS")).config.name == "JOBS"
    finally:
        await a.close()


async def test_a_revoked_credential_is_refused_and_its_live_connection_kicked(
    stack: JobStack, auth_nats: AuthNats
) -> None:
    from coordinator.nats.auth_callout import kick_host_connections

    host_id = uuid.uuid4()
    await make_island(stack.runtime, host_id=host_id)
    password = await credential_for(stack, host_id)
    url = auth_nats.url_for(str(host_id), password)
    live = await nats.connect(url, allow_reconnect=False)
    closed = asyncio.Event()

    async def on_disconnect() -> None:
        closed.set()

    live._disconnected_cb = on_disconnect
    async with stack.runtime.db.transaction() as session:
        assert await nats_access.revoke_credentials(session, host_id, owner_id=None) == 1
    assert await refused(url)
    assert await kick_host_connections(stack.runtime.settings.nats_url or "", str(host_id)) == 1
    await asyncio.wait_for(closed.wait(), 10)
    await live.close()


async def test_the_shared_credential_is_confined_to_island_subjects(
    stack: JobStack, auth_nats: AuthNats
) -> None:
    from coordinator.pubsub import topic_subject

    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    shared = await nats.connect(
        auth_nats.url_for(nats_access.SHARED_USER, SHARED_PASSWORD), allow_reconnect=False, error_cb=on_error
    )
    shared.errors = errors  # type: ignore[attr-defined]
    try:
        await shared.publish(f"host.{uuid.uuid4()}.heartbeat", b"{}")  # any Island's subjects: allowed
        await shared.publish(topic_subject("job:1"), b"{}")
        await shared.flush()
        await permission_error(shared, "coordinator.pubsub.")
        assert not any("heartbeat" in str(e) for e in errors)
        with pytest.raises(DENIED):
            await shared.jetstream(timeout=3).delete_stream("JOBS")
    finally:
        await shared.close()
    assert await refused(auth_nats.url_for(nats_access.SHARED_USER, "wrong"))


async def test_the_shared_mode_is_off_unless_configured(database_url: str, auth_nats: AuthNats) -> None:
    async with auth_stack(database_url, auth_nats, nats_shared_island_password=None):
        assert await refused(auth_nats.url_for(nats_access.SHARED_USER, SHARED_PASSWORD))


async def _lifecycle(stack: JobStack, auth_nats: AuthNats, *, own_credential: bool) -> None:
    await seed_cargos(stack.runtime)
    host_id = uuid.uuid4()
    await make_island(stack.runtime, host_id=host_id, fleet=stack.fleet)
    if own_credential:  # the official Island's connection string form: nats://<user>:<pass>@host:port
        url = auth_nats.url_for(str(host_id), await credential_for(stack, host_id))
    else:
        url = auth_nats.url_for(nats_access.SHARED_USER, SHARED_PASSWORD)
    island = FakeIsland(url, host_id=host_id)
    consumer = await make_consumer(stack.runtime)
    await island.start()
    try:
        stack.fleet.notify_capacity()
        job_id = await submit(stack, consumer, CHAT)
        job = await wait_status(stack, consumer, job_id, "completed")
        assert job["output"] == "Hello"
        assert job["placement"]["host_id"] == island.id
    finally:
        await island.stop()


async def test_an_island_with_its_own_credential_runs_a_job(stack: JobStack, auth_nats: AuthNats) -> None:
    await _lifecycle(stack, auth_nats, own_credential=True)


async def test_an_island_with_the_shared_credential_runs_a_job(stack: JobStack, auth_nats: AuthNats) -> None:
    await _lifecycle(stack, auth_nats, own_credential=False)


async def test_an_owner_issues_and_revokes_an_islands_credential_over_the_api(
    stack: JobStack, auth_nats: AuthNats
) -> None:
    owner = await make_consumer(stack.runtime)
    stranger = await make_consumer(stack.runtime, "stranger@example.com")
    host_id = uuid.uuid4()
    await make_island(stack.runtime, host_id=host_id, owner_id=owner.user.id)
    path = f"/api/v1/hosts/{host_id}/nats-credentials"
    assert (await stack.http.post(path, headers=stranger.headers)).status_code == 403
    assert (
        await stack.http.post("/api/v1/hosts/not-a-uuid/nats-credentials", headers=owner.headers)
    ).status_code == 404
    answer = await stack.http.post(path, headers=owner.headers)
    assert answer.status_code == 201, answer.text
    data = answer.json()["data"]
    assert data["user"] == str(host_id)
    assert data["nats_url"] == f"nats://{host_id}:{data['password']}@127.0.0.1:{auth_nats.server.port}"
    live = await nats.connect(data["nats_url"], allow_reconnect=False)
    closed = asyncio.Event()

    async def on_disconnect() -> None:
        closed.set()

    live._disconnected_cb = on_disconnect
    assert (await stack.http.delete(path, headers=stranger.headers)).status_code == 403
    revoked = await stack.http.delete(path, headers=owner.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["data"] == {"host_id": str(host_id), "revoked": 1, "disconnected": 1}
    await asyncio.wait_for(closed.wait(), 10)
    await live.close()
    assert await refused(data["nats_url"])


async def test_a_new_credential_replaces_the_old_one(stack: JobStack, auth_nats: AuthNats) -> None:
    host_id = uuid.uuid4()
    await make_island(stack.runtime, host_id=host_id)
    old = await credential_for(stack, host_id)
    new = await credential_for(stack, host_id)
    assert await refused(auth_nats.url_for(str(host_id), old))
    assert not await refused(auth_nats.url_for(str(host_id), new))


@asynccontextmanager
async def hosts_stack(database_url: str, auth_nats: AuthNats) -> AsyncIterator[Runtime]:
    from coordinator.app import hosts_children

    runtime = build_runtime(
        make_settings(
            database_url,
            nats_url=auth_nats.server.coordinator_url,
            nats_auth_issuer_seed=auth_nats.auth.issuer_seed,
            nats_shared_island_password=SHARED_PASSWORD,
            require_host_approval=False,
        )
    )
    supervisor = Supervisor(
        [NatsConnectionChild(runtime), AuthCalloutChild(runtime), *hosts_children(runtime)]
    )
    await supervisor.start()
    try:
        yield runtime
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


def register_body(host_id: uuid.UUID, ram_mb: int) -> bytes:
    import json

    caps = {"gpu_model": None, "gpu_vram_mb": None, "cpu_cores": 8, "ram_mb": ram_mb, "region": "eu"}
    return json.dumps({"host_id": str(host_id), "capabilities": caps, "version": "0.4.0"}).encode()


async def test_island_a_cannot_register_as_or_claim_the_pairing_code_of_another_host(
    database_url: str, auth_nats: AuthNats
) -> None:
    import json

    from sqlalchemy import select

    from coordinator.hosts.models import Host

    async with hosts_stack(database_url, auth_nats) as runtime:
        stack = JobStack(runtime, httpx.AsyncClient())
        attacker = await island_client(auth_nats, stack)
        victim = uuid.uuid4()
        await make_island(runtime, host_id=victim, ram_mb=16384)
        async with runtime.db.transaction() as session:
            await nats_access.issue_credential(
                session, runtime.settings.secret_key, victim, owner_id=None, actor_id=None
            )
        try:
            # Pairing for a host with its own credential: no code to whoever asks.
            reply = await attacker.request(
                "coordinator.hosts.pairing", json.dumps({"host_id": str(victim)}).encode()
            )
            assert json.loads(reply.data) == {"success": False, "error": "Island already paired"}

            # A forged registration for the victim (offline: nobody holds its probe subject) is not applied,
            # while the attacker's own registration (it answers its own probe) is.
            async def pong(msg: Any) -> None:
                await attacker.publish(msg.reply, b"pong")

            await attacker.subscribe(f"host.{attacker.host_id}.probe", cb=pong)
            await attacker.publish("coordinator.hosts.register", register_body(victim, ram_mb=1))
            await attacker.publish("coordinator.hosts.register", register_body(attacker.host_id, ram_mb=2048))
            await attacker.flush()

            async def own_registered() -> Host | None:
                async with runtime.db.session() as session:
                    host = (
                        await session.execute(select(Host).where(Host.id == attacker.host_id))
                    ).scalar_one()
                    return host if host.ram_mb == 2048 else None

            own = await eventually(own_registered)
            assert own.nats_credential == nats_access.OWN_CREDENTIAL
            async with runtime.db.session() as session:
                victim_row = (await session.execute(select(Host).where(Host.id == victim))).scalar_one()
            assert victim_row.ram_mb == 16384  # the forged 1 MB registration changed nothing
        finally:
            await attacker.close()
