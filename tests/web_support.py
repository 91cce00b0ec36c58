"""The web app's browser tests: a whole coordinator (every child, real PostgreSQL and NATS) with the
reference Island, and Debian's Chromium driven by Playwright (its Python wheel ships the driver; the
browser is the system's `/usr/bin/chromium`, never a download)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from sqlalchemy import select

from coordinator.accounts.models import EmailOutbox, User
from coordinator.hosts.models import Host
from coordinator.runtime import Runtime
from island.agent import Island, IslandConfig
from island.runtimes import RuntimeOptions
from tests.factories import seed_cargos
from tests.islands_support import eventually, running_coordinator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
FAST = {"output_flush_interval_seconds": 0.02, "sse_keepalive_seconds": 1.0}


@dataclass
class WebStack:
    runtime: Runtime
    island: Island

    @property
    def url(self) -> str:
        return self.runtime.base_url


@asynccontextmanager
async def web_stack(
    database_url: str, nats_url: str, state_dir: Path, *, token_rate: float = 10.0, **overrides: Any
) -> AsyncIterator[WebStack]:
    """The coordinator and one reference Island that streams `token_rate` tokens (image steps) a second."""
    async with running_coordinator(database_url, nats_url, **{**FAST, **overrides}) as runtime:
        await seed_cargos(runtime)
        island = Island(
            IslandConfig(
                nats_url=nats_url,
                state_dir=state_dir / "island",
                gpu_model="NVIDIA GeForce RTX 4090",
                gpu_vram_mb=24564,
                region="eu-west",
                heartbeat_interval=0.3,
                lease_interval=1.0,
                asking_prices={"_default": "0.1"},
                runtime=RuntimeOptions(token_rate=token_rate, cache_dir=state_dir / "wasm-cache"),
            )
        )
        await island.start()
        try:
            yield WebStack(runtime, island)
        finally:
            await island.stop()


async def island_status(runtime: Runtime, host_id: str) -> str | None:
    async with runtime.db.session() as session:
        return await session.scalar(select(Host.status).where(Host.id == uuid.UUID(host_id)))


async def wait_island_online(stack: WebStack) -> None:
    async def online() -> bool:
        return await island_status(stack.runtime, stack.island.host_id) == "online"

    await eventually(online, within=15)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@asynccontextmanager
async def new_page(browser: Browser) -> AsyncIterator[tuple[BrowserContext, Page]]:
    context = await browser.new_context(viewport={"width": 1200, "height": 860}, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    try:
        yield context, page
    finally:
        await context.close()


async def magic_token(runtime: Runtime, email: str) -> str:
    """The token of the newest sign-in mail to `email` in the outbox (as a person would click it)."""

    async def newest() -> str | None:
        async with runtime.db.session() as session:
            body = await session.scalar(
                select(EmailOutbox.body)
                .where(EmailOutbox.recipient == email)
                .order_by(EmailOutbox.id.desc())
                .limit(1)
            )
        found = re.search(r"/auth/magic/([A-Za-z0-9_\-]+)", body or "")
        return found.group(1) if found else None

    token: str = await eventually(newest)
    return token


async def sign_in(page: Page, stack: WebStack, email: str) -> None:
    """Sign in as a person does: ask for a link on /auth/login, open the link from the mail."""
    await page.goto(f"{stack.url}/auth/login")
    await page.fill("#email", email)
    await page.click("form button[type=submit]")
    await page.wait_for_selector("#sent")
    token = await magic_token(stack.runtime, email)
    await page.goto(f"{stack.url}/auth/magic/{token}")
    await page.wait_for_url(f"{stack.url}/chat")


async def user_id(runtime: Runtime, email: str) -> int:
    async with runtime.db.session() as session:
        found = await session.scalar(select(User.id).where(User.email == email))
    assert found is not None
    return int(found)


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
