"""`POST /api/v1/chat/completions`, read the way the CLI reads it (OpenAI shape, SSE chunks, `[DONE]`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from httpx_sse import aconnect_sse

from coordinator.jobs.events import JobRef
from tests.stream_support import Stack, assign, finish, job_of, newest_job, stream_stack

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello"},
]


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as s:
        yield s


async def run_island(stack: Stack, tokens: list[str], *, fail: str | None = None) -> JobRef:
    """Wait for the endpoint's job, then play a container Island's output and status."""
    ref = await assign(stack, await newest_job(stack.runtime, stack.consumer.user.id))
    for seq, token in enumerate(tokens, start=1):
        await stack.accumulator.on_output(ref, seq, token, False)
        await asyncio.sleep(0.01)
    if fail:
        await finish(stack, ref, "failed", error=fail)
    else:
        await stack.accumulator.on_output(ref, len(tokens) + 1, "", True)
        await finish(stack, ref)  # usage counted: the tokens, and 18 prompt characters ≈ 5 tokens
    return ref


async def cli_stream(stack: Stack, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, list[Any]]:
    """Like the CLI: real SSE parser, skip `[DONE]` and empty data, print `choices[0].delta.content`,
    keep the last non-empty `usage`."""
    text, usage, chunks = "", None, []
    async with aconnect_sse(
        stack.http, "POST", "/api/v1/chat/completions", headers=stack.consumer.headers, json=body
    ) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            if not sse.data or sse.data == "[DONE]":
                chunks.append(sse.data)
                continue
            chunk = json.loads(sse.data)
            chunks.append(chunk)
            assert isinstance(chunk["choices"], list)
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
            if chunk.get("usage"):
                usage = chunk["usage"]
    return text, usage, chunks


async def test_non_streaming_returns_the_openai_completion(stack: Stack) -> None:
    request = asyncio.create_task(
        stack.http.post(
            "/api/v1/chat/completions",
            headers=stack.consumer.headers,
            json={"model": "default", "messages": MESSAGES, "stream": False, "max_tokens": 32},
        )
    )
    ref = await run_island(stack, ["Hel", "lo!"])
    response = await request
    assert response.status_code == 200, response.text
    body = response.json()
    assert "data" not in body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 7
    assert body["model"] == "llm-chat"
    job = await job_of(stack.runtime, ref.job_id)
    assert job.input == {
        "prompt": "Say hello",
        "system_prompt": "Be brief.",
        "messages": MESSAGES,
        "max_tokens": 32,
    }


async def test_streaming_sends_chunks_then_usage_then_done(stack: Stack) -> None:
    body = {"model": "default", "messages": MESSAGES, "stream": True, "temperature": 0}
    reader = asyncio.create_task(cli_stream(stack, body))
    await run_island(stack, ["Hel", "lo", " there"])
    text, usage, chunks = await reader
    assert text == "Hello there"
    assert usage is not None and usage["total_tokens"] == 8
    assert chunks[-1] == "[DONE]"
    last = chunks[-2]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])


async def test_unknown_model_names_use_the_default_chat_cargo(stack: Stack) -> None:
    request = asyncio.create_task(
        stack.http.post(
            "/api/v1/chat/completions",
            headers=stack.consumer.headers,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
    )
    await run_island(stack, ["ok"])
    response = await request
    assert response.status_code == 200
    assert response.json()["model"] == "llm-chat"
    assert response.json()["choices"][0]["message"]["content"] == "ok"


async def test_a_failed_job_is_an_error_in_the_envelope(stack: Stack) -> None:
    request = asyncio.create_task(
        stack.http.post(
            "/api/v1/chat/completions",
            headers=stack.consumer.headers,
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
    )
    await run_island(stack, ["x"], fail="GGUF error: boom")
    response = await request
    assert response.status_code == 502
    assert response.json() == {"error": {"code": "job_failed", "message": "GGUF error: boom"}}


async def test_bad_requests_and_missing_credits_use_the_error_envelope(stack: Stack) -> None:
    from decimal import Decimal

    from tests.factories import make_consumer

    url = "/api/v1/chat/completions"
    response = await stack.http.post(url, headers=stack.consumer.headers, json={"messages": []})
    assert response.status_code == 422 and "messages" in response.json()["errors"]
    response = await stack.http.post(
        url, headers=stack.consumer.headers, json={"messages": [{"role": "system", "content": "x"}]}
    )
    assert response.status_code == 422
    assert response.json()["errors"] == {"messages": ["must contain a user message"]}
    poor = await make_consumer(stack.runtime, "poor@example.com", credits=Decimal(0))
    response = await stack.http.post(url, headers=poor.headers, json={"messages": MESSAGES})
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"
    response = await stack.http.post(url, json={"messages": MESSAGES})
    assert response.status_code == 401
