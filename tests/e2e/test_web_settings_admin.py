"""Browser tests of the settings and operator pages: API keys (shown once, revoked), pairing an Island
with its code, an operator approving and suspending an Island while the fleet page follows, and a
non-admin refused on every operator page."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest_asyncio
from playwright.async_api import Browser, Page
from sqlalchemy import select

from coordinator.accounts import service as accounts
from coordinator.hosts.models import Host
from tests import web_support
from tests.islands_support import eventually
from tests.web_support import WebStack, island_status, new_page, screenshot, sign_in, user_id, web_stack

browser = web_support.browser  # one Chromium for the module's tests

ADMIN_PAGES = [
    "/admin",
    "/admin/fleet",
    "/admin/fleet/table",
    "/admin/fleet/live",
    "/admin/jobs",
    "/admin/jobs/counts",
    "/admin/users",
    "/admin/kyc",
    "/admin/kyc?status=verified",
    "/admin/registry",
    "/admin/exchange",
]


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[WebStack]:
    # Islands wait for an operator's approval here (as in production).
    async with web_stack(database_url, nats_url, tmp_path, require_host_approval=True) as running:
        yield running


async def make_admin(stack: WebStack, email: str) -> None:
    async with stack.runtime.db.transaction() as session:
        await accounts.create_user(session, email, credits=Decimal(100), admin=True)


async def host_row(stack: WebStack) -> Host:
    async with stack.runtime.db.session() as session:
        host = await session.scalar(select(Host).where(Host.id == uuid.UUID(stack.island.host_id)))
    assert host is not None
    return host


async def fleet_row_status(page: Page, host_id: str) -> str | None:
    return await page.locator(f"#fleet-table tr[data-host-id='{host_id}'] .host-status").text_content()


async def test_api_keys_are_shown_once_and_revoked(stack: WebStack, browser: Browser) -> None:
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "keys@example.com")
        await page.goto(f"{stack.url}/settings/api-keys")
        await page.fill("#key-name", "laptop")
        await page.uncheck("input[name=scopes][value=write]")
        await page.click("form.inline-form button[type=submit]")
        secret = await page.locator("#new-key-secret").text_content()
        assert secret is not None and secret.startswith("ak_")
        await screenshot(page, "api-keys")
        async with httpx.AsyncClient(base_url=stack.url) as http:
            bearer = {"Authorization": f"Bearer {secret}"}
            assert (await http.get("/api/v1/account", headers=bearer)).status_code == 200
            # Created with the read scope only: writing is refused.
            refused = await http.post(
                "/api/v1/jobs", headers=bearer, json={"workload": "llm-chat", "input": {}}
            )
            assert refused.status_code == 403
            # Shown once: the list page never shows the secret again.
            await page.goto(f"{stack.url}/settings/api-keys")
            assert secret not in await page.content()
            row = page.locator("#keys tr", has_text="laptop")
            assert "read" in (await row.text_content() or "")
            await row.locator("button", has_text="Revoke").click()
            await page.wait_for_url(f"{stack.url}/settings/api-keys")
            assert await page.locator("#keys tr", has_text="laptop").count() == 0
            assert (await http.get("/api/v1/account", headers=bearer)).status_code == 401


async def test_pair_an_island_with_its_code_and_suspend_it(stack: WebStack, browser: Browser) -> None:
    code = await eventually(lambda: _code(stack), within=15)
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "owner@example.com")
        await page.goto(f"{stack.url}/settings/islands")
        await page.fill("#code", code)
        await page.click("form.inline-form button[type=submit]")
        await page.locator("#paired").wait_for()
        owner = await user_id(stack.runtime, "owner@example.com")
        assert (await host_row(stack)).owner_id == owner
        row = page.locator(f"#my-islands tr[data-host-id='{stack.island.host_id}']")
        assert await row.count() == 1
        await screenshot(page, "islands")
        await row.locator("button", has_text="Suspend").click()
        await page.wait_for_url(f"{stack.url}/settings/islands")
        assert (await host_row(stack)).status == "suspended"
        assert "suspended" in (await row.locator(".status").text_content() or "")


async def _code(stack: WebStack) -> str | None:
    return stack.island.pairing_code


async def test_admin_approves_and_suspends_and_the_fleet_page_follows(
    stack: WebStack, browser: Browser
) -> None:
    host_id = stack.island.host_id

    async def pending() -> bool:
        return await island_status(stack.runtime, host_id) == "pending_approval"

    await eventually(pending, within=15)
    await make_admin(stack, "ops@example.com")
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "ops@example.com")
        polled: list[str] = []
        page.on("request", lambda r: polled.append(r.url) if "/admin/fleet/table" in r.url else None)
        await page.goto(f"{stack.url}/admin/fleet")
        assert "pending_approval" in (await fleet_row_status(page, host_id) or "")
        await page.locator(f"#fleet-table tr[data-host-id='{host_id}'] button", has_text="Approve").click()
        # Approved, the Island's next heartbeat brings it online: the page shows it without a reload.
        await page.locator(f"#fleet-table tr[data-host-id='{host_id}'] .status-online").wait_for()
        assert (await host_row(stack)).approved
        await screenshot(page, "admin-fleet")

        # Another operator suspends it over the API: this page follows on its own.
        async with stack.runtime.db.transaction() as session:
            other = await accounts.create_user(session, "ops2@example.com", admin=True)
            _, key = await accounts.create_api_key(session, stack.runtime.settings.secret_key, other, "ops")
        async with httpx.AsyncClient(base_url=stack.url) as http:
            answer = await http.post(
                f"/api/v1/admin/hosts/{host_id}/suspend", headers={"Authorization": f"Bearer {key}"}, json={}
            )
            assert answer.status_code == 200
        await page.locator(f"#fleet-table tr[data-host-id='{host_id}'] .status-suspended").wait_for()
        # And resumed from this page.
        await page.locator(f"#fleet-table tr[data-host-id='{host_id}'] button", has_text="Resume").click()
        await page.locator(f"#fleet-table tr[data-host-id='{host_id}'] .status-online").wait_for()
        assert polled == []  # pushed over the page's SSE stream, never polled

        for path in ("/admin/jobs", "/admin/users", "/cargo", "/exchange", "/settings"):
            await page.goto(f"{stack.url}{path}")
            assert await page.locator("h1").count() == 1
            await screenshot(page, path.strip("/").replace("/", "-"))


async def test_a_non_admin_gets_403_on_every_admin_page(stack: WebStack, browser: Browser) -> None:
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "curious@example.com")
        for path in ADMIN_PAGES:
            response = await page.goto(f"{stack.url}{path}")
            assert response is not None and response.status == 403, path
            assert await page.locator("[data-status='403']").count() == 1
        assert await page.locator("nav a", has_text="Admin").count() == 0
        # The operators' forms refuse a non-admin too (with a valid CSRF token), and change nothing.
        csrf = await page.locator("input[name=csrf_token]").first.input_value()
        me = await user_id(stack.runtime, "curious@example.com")
        for path in (
            f"/admin/kyc/{me}/approve",
            "/admin/registry/1/approve",
            "/admin/exchange/snapshot",
            f"/admin/fleet/{stack.island.host_id}/approve",
        ):
            answer = await page.request.post(f"{stack.url}{path}", form={"csrf_token": csrf})
            assert answer.status == 403, path
