"""Browser test of `/host`: the page pairs a browser Island to the signed-in account, joins
`island:<id>` over the Phoenix socket, and runs the jobs the coordinator gives it in the tab — the WASM
`text-stats` Cargo with Chromium's WebAssembly, a chat job with the in-browser text generator. The
coordinator has no other Island, so only the tab can have run them; the results are read from the API."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from playwright.async_api import Browser
from sqlalchemy import select

from coordinator.hosts.models import DeviceToken, Host
from coordinator.runtime import Runtime
from tests import web_support
from tests.factories import make_consumer, seed_cargos
from tests.islands_support import eventually, running_coordinator
from tests.web_support import FAST, new_page, screenshot, sign_in, user_id

browser = web_support.browser


class Stack:
    """Just the coordinator (the web_support stack's reference Island would compete for the jobs)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def url(self) -> str:
        return self.runtime.base_url


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_coordinator(database_url, nats_url, **FAST) as runtime:
        await seed_cargos(runtime)
        yield Stack(runtime)


async def finished(http: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()["data"]
        return body if body["status"] in ("completed", "failed", "cancelled", "timeout") else None

    result: dict[str, Any] = await eventually(done, within=30, step=0.2)
    return result


async def test_the_host_page_runs_text_stats_and_chat_jobs_in_the_tab(stack: Stack, browser: Browser) -> None:
    consumer = await make_consumer(stack.runtime, "consumer@example.com")
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "host@example.com")  # type: ignore[arg-type]
        await page.goto(f"{stack.url}/host")
        await page.locator("#host-status", has_text="ready").wait_for()
        host_id = (await page.locator("#host-id").text_content() or "").strip()
        owner = await user_id(stack.runtime, "host@example.com")
        async with stack.runtime.db.session() as session:
            host = await session.scalar(select(Host).where(Host.id == uuid.UUID(host_id)))
            tokens = list(await session.scalars(select(DeviceToken).where(DeviceToken.host_id == host.id)))
        assert host is not None and host.owner_id == owner
        assert (host.platform, host.transport) == ("browser", "websocket")
        assert len(tokens) == 1 and tokens[0].user_id == owner

        async def online() -> bool:
            view = stack.runtime.fleet.get(uuid.UUID(host_id))
            return view is not None and view.status == "online" and "wasm" in view.supported_runtimes

        await eventually(online, within=15)
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            text = "hello from a browser tab, naïve café\nsecond line"
            answer = await http.post(
                "/api/v1/jobs",
                headers=consumer.headers,
                json={"workload": "text-stats", "input": {"text": text}},
            )
            assert answer.status_code == 201, answer.text
            job = await finished(http, consumer.headers, answer.json()["data"]["id"])
            assert job["status"] == "completed", job
            assert json.loads(job["output"]) == {"words": len(text.split()), "chars": len(text)}
            await page.locator("#jobs-done", has_text="1").wait_for()

            chat = await http.post(
                "/api/v1/jobs",
                headers=consumer.headers,
                json={"workload": "llm-chat", "input": {"prompt": "Tell me about islands", "max_tokens": 12}},
            )
            assert chat.status_code == 201, chat.text
            reply = await finished(http, consumer.headers, chat.json()["data"]["id"])
            assert reply["status"] == "completed", reply
            assert len(reply["output"].split()) == 12
            await page.locator("#jobs-done", has_text="2").wait_for()
        rate = await page.locator("#tokens-per-second").text_content()
        assert rate is not None and float(rate) > 0
        assert (await page.locator("#jobs-failed").text_content()) == "0"
        async with stack.runtime.db.session() as session:
            ran = await session.scalar(select(Host).where(Host.id == uuid.UUID(host_id)))
        assert ran is not None and ran.earnings_total > 0
        await page.locator("#earnings", has_text=f"{ran.earnings_total:.4f}").wait_for()
        await screenshot(page, "host")

        # A reload keeps the same Island (its device token is in the tab's storage).
        await page.reload()
        await page.locator("#host-status", has_text="ready").wait_for()
        assert (await page.locator("#host-id").text_content() or "").strip() == host_id


async def test_host_stats_are_for_the_owner_only(stack: Stack, browser: Browser) -> None:
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "first@example.com")  # type: ignore[arg-type]
        await page.goto(f"{stack.url}/host")
        await page.locator("#host-status", has_text="ready").wait_for()
        host_id = (await page.locator("#host-id").text_content() or "").strip()
        mine = await page.request.get(f"{stack.url}/host/stats?host_id={host_id}")
        assert mine.status == 200 and (await mine.json())["host_id"] == host_id
        # Without the page's CSRF token no browser Island is created.
        refused = await page.request.post(f"{stack.url}/host/device")
        assert refused.status == 403
    async with new_page(browser) as (_, other):
        await sign_in(other, stack, "second@example.com")  # type: ignore[arg-type]
        theirs = await other.request.get(f"{stack.url}/host/stats?host_id={host_id}")
        assert theirs.status == 404
