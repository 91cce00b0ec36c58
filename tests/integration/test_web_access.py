"""The second round's pages over HTTP (no browser): `/host`, `/verify`, device tokens and NATS
credentials in settings — signed-out visitors sent to the login page, CSRF required on every form (and
nothing written without it), another account's device token and Island out of reach, input validated."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from sqlalchemy import func, select

from coordinator.accounts.models import User
from coordinator.hosts.models import DeviceToken, Host, HostNatsCredential
from tests.integration.test_web_pages import Browserish, signed_in
from tests.stream_support import Stack, stream_stack


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as running:
        yield running


@pytest_asyncio.fixture
async def alice(stack: Stack) -> AsyncIterator[Browserish]:
    client = await signed_in(stack, "alice@example.com")
    yield client
    await client.http.aclose()


@pytest_asyncio.fixture
async def bob(stack: Stack) -> AsyncIterator[Browserish]:
    client = await signed_in(stack, "bob@example.com")
    yield client
    await client.http.aclose()


async def browser_island(client: Browserish) -> dict[str, str]:
    await client.page("/host")
    answer = await client.http.post("/host/device", headers={"X-CSRF-Token": client.csrf})
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body: dict[str, str] = answer.json()
    return body


async def count(stack: Stack, model: type, *where: object) -> int:
    async with stack.runtime.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_signed_out_visitors_go_to_the_login_page(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.runtime.base_url) as http:
        for path in ("/host", "/verify", "/host/stats?host_id=x", "/admin/kyc", "/admin/exchange"):
            answer = await http.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/auth/login", path


async def test_forms_without_csrf_are_refused_and_write_nothing(stack: Stack, alice: Browserish) -> None:
    before = await count(stack, Host)
    refused = await alice.http.post("/host/device")
    assert refused.status_code == 403 and await count(stack, Host) == before
    await alice.page("/verify")
    no_token = await alice.post("/verify", {"legal_name": "Alice", "country": "NL"}, csrf=False)
    assert no_token.status_code == 403
    island = await browser_island(alice)
    revoke = await alice.post(f"/settings/islands/devices/{uuid.uuid4()}/revoke", csrf=False)
    assert revoke.status_code == 403
    issue = await alice.post(f"/settings/islands/{island['host_id']}/nats-credentials", csrf=False)
    assert issue.status_code == 403
    assert await count(stack, HostNatsCredential) == 0
    async with stack.runtime.db.session() as session:
        status = await session.scalar(select(User.verification_status).where(User.id == alice.user.id))
    assert status == "unverified"


async def test_another_accounts_device_token_and_island_are_out_of_reach(
    stack: Stack, alice: Browserish, bob: Browserish
) -> None:
    island = await browser_island(alice)
    host_id = uuid.UUID(island["host_id"])
    async with stack.runtime.db.session() as session:
        token_id = await session.scalar(select(DeviceToken.id).where(DeviceToken.host_id == host_id))
        owner = await session.scalar(select(Host.owner_id).where(Host.id == host_id))
    assert owner == alice.user.id and token_id is not None
    await bob.page("/settings/islands")
    assert island["host_id"] not in (await bob.page("/settings/islands")).text
    assert (await bob.post(f"/settings/islands/devices/{token_id}/revoke")).status_code == 404
    assert (await bob.post(f"/settings/islands/{host_id}/nats-credentials")).status_code == 403
    assert (await bob.post(f"/settings/islands/{host_id}/nats-credentials/revoke")).status_code == 403
    assert (await bob.http.get(f"/host/stats?host_id={host_id}")).status_code == 404
    assert await count(stack, DeviceToken, DeviceToken.revoked_at.is_not(None)) == 0
    # Alice's own page lists it and its stats answer.
    assert str(token_id) in (await alice.page("/settings/islands")).text
    stats = (await alice.http.get(f"/host/stats?host_id={host_id}")).json()
    assert stats["host_id"] == str(host_id) and stats["karma"] == 0
    revoked = await alice.post(f"/settings/islands/devices/{token_id}/revoke")
    assert revoked.status_code == 303
    assert await count(stack, DeviceToken, DeviceToken.revoked_at.is_not(None)) == 1


async def test_the_verification_statement_is_validated(stack: Stack, alice: Browserish) -> None:
    await alice.page("/verify")
    bad = await alice.post("/verify", {"legal_name": "Alice", "country": "1"})
    assert bad.status_code == 422 and "country" in bad.text
    await alice.page("/verify")
    good = await alice.post("/verify", {"legal_name": "Alice Example", "country": "nl"})
    assert good.status_code == 201 and 'id="kyc-status"' in good.text and ">pending<" in good.text
    await alice.page("/verify")
    # A non-admin's decision is refused and changes nothing.
    decided = await alice.post(f"/admin/kyc/{alice.user.id}/approve")
    assert decided.status_code == 403
    async with stack.runtime.db.session() as session:
        status = await session.scalar(select(User.verification_status).where(User.id == alice.user.id))
    assert status == "pending"
