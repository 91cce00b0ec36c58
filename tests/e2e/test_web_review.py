"""Browser tests of `/verify` with the operators' KYC queue, the registry review queue (a Cargo pushed to a
real OCI registry and scanned), the operators' exchange page, and device tokens and per-Island NATS
credentials on `/settings/islands` — each decision made by clicking, its effect read from the database
or the API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest_asyncio
from playwright.async_api import Browser, Page
from sqlalchemy import func, select

from coordinator.accounts import service as accounts
from coordinator.accounts.models import User
from coordinator.billing.exchange_models import MarketSnapshot
from coordinator.hosts.models import DeviceToken, HostNatsCredential
from coordinator.marketplace import scanning
from coordinator.workloads.models import Workload, WorkloadSubmission
from tests import oci_support, web_support
from tests.factories import make_consumer
from tests.islands_support import eventually
from tests.oci_support import DEBIAN_12, Registry, dpkg_status, osv, write_advisories
from tests.registry_support import create_submission, submit, verify_identity
from tests.web_support import WebStack, new_page, screenshot, sign_in, web_stack

browser = web_support.browser
oci_registry = oci_support.oci_registry


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[WebStack]:
    async with web_stack(database_url, nats_url, tmp_path) as running:
        yield running


async def make_admin(stack: WebStack, email: str) -> None:
    async with stack.runtime.db.transaction() as session:
        await accounts.create_user(session, email, credits=Decimal(100), admin=True)


async def kyc_status(stack: WebStack, email: str) -> str | None:
    async with stack.runtime.db.session() as session:
        return await session.scalar(select(User.verification_status).where(User.email == email))


async def test_verify_and_the_kyc_queue(stack: WebStack, browser: Browser) -> None:
    await make_admin(stack, "kyc-ops@example.com")
    async with new_page(browser) as (_, me), new_page(browser) as (_, ops):
        await sign_in(me, stack, "applicant@example.com")
        await me.goto(f"{stack.url}/verify")
        assert (await me.locator("#kyc-status").text_content()) == "unverified"
        await me.fill("#legal_name", "Ada Lovelace")
        await me.fill("#country", "gb")
        await me.click("#kyc-form button[type=submit]")
        await me.locator("#kyc-started").wait_for()
        assert (await me.locator("#kyc-status").text_content()) == "pending"
        await screenshot(me, "verify")

        await sign_in(ops, stack, "kyc-ops@example.com")
        await ops.goto(f"{stack.url}/admin/kyc")
        row = ops.locator("#kyc-queue tr", has_text="applicant@example.com")
        assert "Ada Lovelace" in (await row.text_content() or "") and "GB" in (await row.text_content() or "")
        await screenshot(ops, "admin-kyc")
        await row.locator("input[name=reason]").fill("the name does not match the document")
        await row.locator("button", has_text="Reject").click()
        await ops.wait_for_url(f"{stack.url}/admin/kyc")
        assert await ops.locator("#kyc-queue tr", has_text="applicant@example.com").count() == 0
        assert await kyc_status(stack, "applicant@example.com") == "rejected"

        await me.goto(f"{stack.url}/verify")
        assert (await me.locator("#kyc-status").text_content()) == "rejected"
        assert "does not match" in (await me.locator("#kyc-reason").text_content() or "")
        await me.fill("#legal_name", "Augusta Ada King")
        await me.fill("#country", "GB")
        await me.click("#kyc-form button[type=submit]")
        await me.locator("#kyc-started").wait_for()

        await ops.goto(f"{stack.url}/admin/kyc")
        row = ops.locator("#kyc-queue tr", has_text="applicant@example.com")
        await row.locator("button", has_text="Approve").click()
        await ops.wait_for_url(f"{stack.url}/admin/kyc")
        assert await kyc_status(stack, "applicant@example.com") == "verified"
        await me.goto(f"{stack.url}/verify")
        await me.locator("#kyc-done").wait_for()
        assert await me.locator("#kyc-form").count() == 0


async def test_the_registry_review_queue(
    stack: WebStack, browser: Browser, oci_registry: Registry, tmp_path: Path
) -> None:
    runtime = stack.runtime
    runtime.settings.registry_scanners = ["builtin"]
    advisory = osv(
        "DSA-9-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.11-1"}], "CRITICAL"
    )
    runtime.settings.registry_advisory_dir = str(write_advisories(tmp_path / "osv", advisory))
    dev = await make_consumer(runtime, "publisher@example.com")
    await verify_identity(runtime, dev.user.id)
    files = {"etc/os-release": DEBIAN_12, "var/lib/dpkg/status": dpkg_status(("openssl", "3.0.11-1"))}
    digest = oci_registry.push_image("acme/web-echo", files)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        ids = []
        for slug in ("web-echo", "web-other"):
            created = await create_submission(http, dev, slug, f"{oci_registry.host}/acme/web-echo", digest)
            await submit(http, dev, created["id"])
            assert (await scanning.scan_submission(runtime, created["id"]))["status"] == "in_review"
            ids.append(created["id"])
    await make_admin(stack, "reviewer@example.com")
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "reviewer@example.com")
        await page.goto(f"{stack.url}/admin/registry")
        assert await page.locator("#registry-queue tr[data-submission-id]").count() == 2
        assert "acme/web-echo" in (await page.locator("#registry-queue .image").first.text_content() or "")
        await screenshot(page, "admin-registry")
        first = page.locator(f"#registry-queue tr[data-submission-id='{ids[0]}']")
        # L1 needs a track record this new Cargo lacks: refused with the reason, nothing published.
        await first.locator("select[name=trust_level]").select_option("1")
        await first.locator("button", has_text="Approve").click()
        await page.locator("[data-status='409']").wait_for()
        assert "successful jobs" in await page.content()
        await page.goto(f"{stack.url}/admin/registry")
        await first.locator("select[name=trust_level]").select_option("0")
        await first.locator("button", has_text="Approve").click()
        await page.wait_for_url(f"{stack.url}/admin/registry")
        second = page.locator(f"#registry-queue tr[data-submission-id='{ids[1]}']")
        await second.locator("input[name=reason]").fill("describe what it does")
        await second.locator("button", has_text="Request changes").click()
        await page.wait_for_url(f"{stack.url}/admin/registry")
        assert await page.locator("#registry-queue tr[data-submission-id]").count() == 0
    async with runtime.db.session() as session:
        states = dict(
            (await session.execute(select(WorkloadSubmission.id, WorkloadSubmission.status))).tuples().all()
        )
        published = await session.scalar(select(Workload).where(Workload.slug == "web-echo"))
    assert states == {ids[0]: "published", ids[1]: "changes_requested"}
    assert published is not None and published.trust_level == 0


async def test_the_operators_exchange_page_takes_a_snapshot(stack: WebStack, browser: Browser) -> None:
    await web_support.wait_island_online(stack)
    await make_admin(stack, "market-ops@example.com")
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "market-ops@example.com")
        await page.goto(f"{stack.url}/admin/exchange")
        assert "1.00" in (await page.locator("#surge").text_content() or "")
        supply = await page.locator("#supply-demand tr[data-cargo='llm-chat'] .supply").text_content()
        assert supply == "1"  # the reference Island serves it
        await page.click("form[action='/admin/exchange/snapshot'] button")
        await page.wait_for_url(f"{stack.url}/admin/exchange")
        async with stack.runtime.db.session() as session:
            taken = await session.scalar(select(func.count()).select_from(MarketSnapshot))
        assert taken and await page.locator("#snapshots tbody tr", has_text="llm-chat").count() == 1
        await screenshot(page, "admin-exchange")


async def _revoked(stack: WebStack, host_id: str) -> bool:
    async with stack.runtime.db.session() as session:
        token = await session.scalar(select(DeviceToken).where(DeviceToken.host_id == uuid.UUID(host_id)))
    return token is not None and token.revoked_at is not None


async def test_device_tokens_and_nats_credentials_in_settings(stack: WebStack, browser: Browser) -> None:
    code = await eventually(lambda: _code(stack), within=15)
    async with new_page(browser) as (_, host_tab), new_page(browser) as (_, page):
        await sign_in(host_tab, stack, "owner@example.com")
        await host_tab.goto(f"{stack.url}/host")
        await host_tab.locator("#host-status", has_text="ready").wait_for()
        browser_host = (await host_tab.locator("#host-id").text_content() or "").strip()
        await sign_in(page, stack, "owner@example.com")
        await page.goto(f"{stack.url}/settings/islands")
        await page.fill("#code", code)
        await page.click("form.inline-form button[type=submit]")
        await page.locator("#paired").wait_for()

        # The NATS Island: issue a credential (shown once), then revoke it.
        nats_host = stack.island.host_id
        row = page.locator(f"#my-islands tr[data-host-id='{nats_host}']")
        await row.locator("button", has_text="Issue").click()
        url = await page.locator("#nats-url").input_value()
        assert f"{nats_host}:" in url and url.startswith("nats://")
        await screenshot(page, "islands-credentials")
        await page.goto(f"{stack.url}/settings/islands")
        assert url not in await page.content()
        await row.locator("button", has_text="Revoke").click()
        await page.wait_for_url(f"{stack.url}/settings/islands")
        async with stack.runtime.db.session() as session:
            live = await session.scalar(
                select(func.count())
                .select_from(HostNatsCredential)
                .where(
                    HostNatsCredential.host_id == uuid.UUID(nats_host),
                    HostNatsCredential.revoked_at.is_(None),
                )
            )
        assert live == 0

        # The browser Island's device token: revoking it cuts the tab's socket at once.
        token_row = page.locator(f"#device-tokens tr[data-host-id='{browser_host}']")
        assert (await token_row.locator(".token-state").text_content()) == "active"
        await token_row.locator("button", has_text="Revoke").click()
        await page.wait_for_url(f"{stack.url}/settings/islands")
        assert (await token_row.locator(".token-state").text_content()) == "revoked"
        assert await _revoked(stack, browser_host)
        await host_tab.locator("#host-status", has_text="revoked").wait_for()
        assert await host_tab.evaluate("Object.keys(localStorage).length") == 0
    await _someone_else_cannot(stack, browser, nats_host)


async def _someone_else_cannot(stack: WebStack, browser: Browser, host_id: str) -> None:
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "stranger@example.com")
        await page.goto(f"{stack.url}/settings/islands")
        csrf = await page.locator("input[name=csrf_token]").first.input_value()
        answer = await page.request.post(
            f"{stack.url}/settings/islands/{host_id}/nats-credentials", form={"csrf_token": csrf}
        )
        assert answer.status == 403
        await _no_new_credential(stack, host_id, page)


async def _no_new_credential(stack: WebStack, host_id: str, page: Page) -> None:
    async with stack.runtime.db.session() as session:
        live = await session.scalar(
            select(func.count())
            .select_from(HostNatsCredential)
            .where(HostNatsCredential.host_id == uuid.UUID(host_id), HostNatsCredential.revoked_at.is_(None))
        )
    assert live == 0, await page.content()


async def _code(stack: WebStack) -> str | None:
    return stack.island.pairing_code
