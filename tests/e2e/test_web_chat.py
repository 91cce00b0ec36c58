"""Browser tests of sign-in, chat and image generation: Debian's Chromium against a whole coordinator
with the reference Island (tests/web_support.py)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser

from coordinator.jobs.models import Job
from tests import web_support
from tests.web_support import (
    WebStack,
    new_page,
    screenshot,
    sign_in,
    wait_island_online,
    web_stack,
)

browser = web_support.browser  # one Chromium for the module's tests

# Records every text the reply takes on, from the first token to the last (a MutationObserver).
RECORD_REPLY = """
() => {
  window.__replies = [];
  const seen = () => {
    const el = document.querySelector('#conversation article.turn:last-of-type .reply-text');
    const text = el ? el.textContent : null;
    if (text && window.__replies[window.__replies.length - 1] !== text) window.__replies.push(text);
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""

RECORD_PROGRESS = """
() => {
  window.__progress = [];
  new MutationObserver(() => {
    const bar = document.querySelector('#images article.turn:first-of-type progress');
    if (bar && bar.getAttribute('max') !== '1') {
      const v = bar.getAttribute('value') + '/' + bar.getAttribute('max');
      if (window.__progress[window.__progress.length - 1] !== v) window.__progress.push(v);
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}
"""


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[WebStack]:
    async with web_stack(database_url, nats_url, tmp_path) as running:
        await wait_island_online(running)
        yield running


async def job_of(stack: WebStack, job_id: str) -> Job:
    async with stack.runtime.db.session() as session:
        job = await session.get(Job, uuid.UUID(job_id))
    assert job is not None
    return job


async def test_sign_in_by_magic_link_and_chat_streams_token_by_token(
    stack: WebStack, browser: Browser
) -> None:
    async with new_page(browser) as (context, page):
        await page.goto(f"{stack.url}/chat")
        assert page.url == f"{stack.url}/auth/login"  # not signed in: sent to the login page
        await screenshot(page, "login")
        await sign_in(page, stack, "reader@example.com")
        cookie = next(c for c in await context.cookies() if c["name"] == "coordinator_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

        await page.evaluate(RECORD_REPLY)
        words = "the quick brown fox jumps over the lazy dog"
        await page.fill("#prompt", words)
        await page.click(".composer button[type=submit]")
        final = page.locator("#conversation article.turn:last-of-type .final")
        await final.wait_for()
        assert await final.get_attribute("data-status") == "completed"
        job_id = await page.locator("#conversation article.turn:last-of-type").get_attribute("data-job-id")
        assert job_id is not None
        job = await job_of(stack, job_id)
        shown = await page.locator("#conversation article.turn:last-of-type .reply-text").text_content()
        assert job.output == "You said: " + words and shown == job.output
        replies: list[str] = await page.evaluate("window.__replies")
        # Tokens arrived one by one: the reply grew through every prefix, one token longer each time.
        tokens = ["You", " said:", *(" " + w for w in words.split())]
        assert replies == ["".join(tokens[: i + 1]) for i in range(len(tokens))]
        meta = await final.text_content()
        assert meta is not None and f"{len(tokens)} tokens" in meta
        assert f"{float(job.charged):.4g} credits" in meta  # the clearing price, once settled
        await screenshot(page, "chat")
        for path, name in (("/credits", "credits"), ("/jobs", "jobs"), (f"/jobs/{job_id}", "job")):
            await page.goto(f"{stack.url}{path}")
            await screenshot(page, name)
        assert job_id in (await page.locator("h1").text_content() or "")
        assert await page.locator("#job-output").text_content() == job.output
        # The stub Island reports no counts: the coordinator counted the streamed tokens and estimated the
        # prompt's (usage.tokens_source "counted"), and the page shows those.
        usage = job.usage or {}
        assert usage["completion_tokens"] == len(tokens) and usage["prompt_tokens"] > 0
        shown_tokens = f"{usage['prompt_tokens']} in · {len(tokens)} out"
        assert await page.locator("#job-tokens").text_content() == shown_tokens

        # The history is there after a reload, with the finished reply.
        await page.goto(f"{stack.url}/chat")
        again = page.locator(f"article[data-job-id='{job_id}']")
        assert await again.locator(".reply-text").text_content() == job.output
        assert f"{len(tokens)} tokens" in (await again.locator(".final").text_content() or "")


async def test_stop_cancels_the_streaming_reply(stack: WebStack, browser: Browser) -> None:
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "stopper@example.com")
        prompt = " ".join(f"word{i}" for i in range(80))  # 82 tokens at 10/s: eight seconds to stop it
        await page.fill("#prompt", prompt)
        await page.click(".composer button[type=submit]")
        turn = page.locator("#conversation article.turn:last-of-type")
        await turn.locator(".reply-text .tok").nth(2).wait_for()
        await turn.locator("button.stop").click()
        final = turn.locator(".final")
        await final.wait_for()
        assert await final.get_attribute("data-status") == "cancelled"
        job_id = await turn.get_attribute("data-job-id")
        assert job_id is not None
        job = await job_of(stack, job_id)
        assert (
            job.state == "cancelled" and job.charged == 0 and job.refunded == job.budget
        )  # refunded in full
        shown = await turn.locator(".reply-text").text_content() or ""
        assert shown and len(shown) < len("You said: " + prompt)


async def test_image_progress_then_the_image_with_its_seed_and_download(
    stack: WebStack, browser: Browser
) -> None:
    async with new_page(browser) as (_, page):
        await sign_in(page, stack, "painter@example.com")
        await page.goto(f"{stack.url}/image")
        await page.evaluate(RECORD_PROGRESS)
        await page.fill("#prompt", "a lighthouse at dusk")
        await page.fill("#steps", "6")
        await page.fill("#seed", "1234")
        await page.click(".composer button[type=submit]")
        turn = page.locator("#images article.turn:first-of-type")
        final = turn.locator(".final")
        await final.wait_for()
        assert await final.get_attribute("data-status") == "completed"
        progress: list[str] = await page.evaluate("window.__progress")
        assert progress == [f"{i}/6" for i in range(1, 7)]
        src = await turn.locator("img.result").get_attribute("src")
        assert src is not None and src.startswith("data:image/png;base64,")
        assert "1234" in (await final.locator(".seed").text_content() or "")
        await screenshot(page, "image")
        async with page.expect_download() as info:
            await final.locator("a.download").click()
        download: Any = await info.value
        data = Path(await download.path()).read_bytes()
        assert data.startswith(b"\x89PNG") and data == base64.b64decode(src.split(",", 1)[1])
