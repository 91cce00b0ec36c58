"""Limits with clear answers: oversized bodies (413, nothing charged) and the limits that need no API key
(magic links per e-mail and per address, sign-ins and failed credentials per address: 429 + Retry-After)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest_asyncio
from sqlalchemy import func, select

from coordinator.accounts.models import EmailOutbox, User
from coordinator.jobs.models import Job
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics
from tests.conftest import make_settings
from tests.factories import make_consumer, seed_cargos

LIMIT = 64 * 1024


@pytest_asyncio.fixture
async def limited(database_url: str) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    from coordinator.app import HttpChild
    from coordinator.supervisor import Supervisor

    runtime = Runtime.from_settings(
        make_settings(
            database_url,
            max_request_bytes=LIMIT,
            magic_link_per_email_per_hour=3,
            magic_link_per_address_per_hour=8,
            sign_in_per_address_per_minute=4,
            bad_credentials_per_address_per_minute=4,
        )
    )
    supervisor = Supervisor([HttpChild(runtime)])
    await supervisor.start()
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            yield runtime, client
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def _jobs_and_credits(runtime: Runtime, user_id: int) -> tuple[int, Decimal]:
    async with runtime.db.session() as session:
        jobs = (await session.execute(select(func.count()).select_from(Job))).scalar_one()
        credits = (await session.execute(select(User.credits).where(User.id == user_id))).scalar_one()
    return jobs, credits


def _prompt_body(size: int) -> bytes:
    return b'{"workload":"llm-chat","input":{"prompt":"' + b"x" * size + b'"}}'


async def test_an_oversized_body_is_refused_with_413_before_anything_is_charged(
    limited: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, http = limited
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    before = metrics.http_bodies_refused._value.get()
    response = await http.post("/api/v1/jobs", content=_prompt_body(LIMIT + 1), headers=consumer.headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert str(LIMIT) in response.json()["error"]["message"]
    assert await _jobs_and_credits(runtime, consumer.user.id) == (0, Decimal(10_000))
    assert metrics.http_bodies_refused._value.get() == before + 1


async def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit_too(
    limited: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, http = limited
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)

    async def chunks() -> AsyncIterator[bytes]:
        body = _prompt_body(LIMIT * 2)
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = await http.post("/api/v1/jobs", content=chunks(), headers=consumer.headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await _jobs_and_credits(runtime, consumer.user.id) == (0, Decimal(10_000))


async def test_a_body_under_the_limit_reaches_the_route(limited: tuple[Runtime, httpx.AsyncClient]) -> None:
    runtime, http = limited
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime)
    response = await http.post("/api/v1/jobs", content=_prompt_body(LIMIT - 200), headers=consumer.headers)
    # The route ran (here: no Island could ever run it, so 422), not the size limit.
    assert response.status_code != 413, response.text


async def test_magic_links_are_limited_per_email_address(limited: tuple[Runtime, httpx.AsyncClient]) -> None:
    runtime, http = limited
    answers = [
        (await http.post("/api/v1/auth/magic-link", json={"email": "Victim@example.com"})).status_code
        for _ in range(4)
    ]
    assert answers == [200, 200, 200, 429]
    refused = await http.post("/api/v1/auth/magic-link", json={"email": "victim@example.com"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    # Another recipient is not affected by the victim's cap.
    assert (
        await http.post("/api/v1/auth/magic-link", json={"email": "other@example.com"})
    ).status_code == 200
    async with runtime.db.session() as session:
        mails = (await session.execute(select(EmailOutbox.recipient))).scalars().all()
    assert sorted(mails) == ["other@example.com"] + ["victim@example.com"] * 3


async def test_magic_links_are_limited_per_client_address(limited: tuple[Runtime, httpx.AsyncClient]) -> None:
    _, http = limited
    answers = [
        (await http.post("/api/v1/auth/magic-link", json={"email": f"u{i}@example.com"})).status_code
        for i in range(9)
    ]
    assert answers == [200] * 8 + [429]


async def test_sign_in_attempts_are_limited_per_client_address(
    limited: tuple[Runtime, httpx.AsyncClient],
) -> None:
    _, http = limited
    answers = [
        (await http.post("/api/v1/auth/session", json={"token": f"guess-{i:012d}"})).status_code
        for i in range(5)
    ]
    assert answers == [404] * 4 + [429]
    page = await http.get("/auth/magic/another-guess-000")
    assert page.status_code == 429


async def test_bad_credentials_are_limited_per_client_address(
    limited: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, http = limited
    consumer = await make_consumer(runtime)
    bad = {"Authorization": "Bearer ak_not-a-real-key-0000000000000000000"}
    answers = [(await http.get("/api/v1/account", headers=bad)).status_code for _ in range(5)]
    assert answers == [401] * 4 + [429]
    # While the address is over its limit, no credential is even checked from it.
    blocked = await http.get("/api/v1/account", headers=consumer.headers)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
