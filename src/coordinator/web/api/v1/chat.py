"""`POST /api/v1/chat/completions`: the OpenAI-compatible chat endpoint the CLI uses (client-api §4.14).

The request becomes an ordinary job of a chat Cargo (`model: "default"` or an unknown name → the default
chat Cargo); `stream:false` waits for it, `stream:true` relays its tokens as OpenAI chunks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from coordinator.accounts.service import Principal
from coordinator.errors import DomainError, NotFound, ValidationFailed
from coordinator.jobs import service as jobs
from coordinator.jobs.models import Job
from coordinator.jobs.views import usage_of
from coordinator.runtime import Runtime
from coordinator.telemetry import context, metrics
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_write
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter
from coordinator.web.sse import data_frame, job_events, sse_response
from coordinator.workloads import service as workloads

router = ApiRouter(tags=["chat"])

DONE_FRAME = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"


class JobFailed(DomainError):
    status_code = 502
    code = "job_failed"


class JobTimedOut(DomainError):
    status_code = 504
    code = "timeout"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(min_length=1, max_length=32)
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)


def chat_input(body: ChatRequest) -> dict[str, Any]:
    """The job input: last user message as `prompt`, system messages joined, and the whole history."""
    users = [m.text() for m in body.messages if m.role == "user" and m.text()]
    if not users:
        raise ValidationFailed("Invalid input", {"messages": ["must contain a user message"]})
    data: dict[str, Any] = {
        "prompt": users[-1],
        "messages": [{"role": m.role, "content": m.text()} for m in body.messages],
    }
    system = "\n\n".join(m.text() for m in body.messages if m.role == "system" and m.text())
    if system:
        data["system_prompt"] = system
    if body.max_tokens is not None:
        data["max_tokens"] = body.max_tokens
    if body.temperature is not None:
        data["temperature"] = body.temperature
    return data


async def chat_cargo(runtime: Runtime, model: str) -> str:
    """The slug of a chat Cargo named by `model`, else the default chat Cargo's."""
    async with runtime.db.session() as session:
        if model and model != "default":
            try:
                workload = await workloads.get_by_slug(session, model)
                if workload.kind == "chat" and workload.is_enabled:
                    return workload.slug
            except NotFound:
                pass
        return (await workloads.default_chat_workload(session)).slug


def token_usage(job: Job) -> dict[str, Any]:
    usage = usage_of(job)
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
        "credits_used": usage["credits_used"],
    }


async def _final_payload(runtime: Runtime, job_id: uuid.UUID) -> dict[str, Any]:
    """Follow the job's events to its end; the final event."""
    async for event in job_events(runtime, job_id, maybe_terminal=False):
        if event is not None and event.is_final:
            return event.payload
    raise JobFailed("The job's stream ended without a result")


async def _load(runtime: Runtime, job_id: uuid.UUID) -> Job:
    async with runtime.db.session() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    return job


async def _complete(runtime: Runtime, job: Job, slug: str) -> dict[str, Any]:
    try:
        async with asyncio.timeout(runtime.settings.chat_completion_timeout_seconds):
            final = await _final_payload(runtime, job.id)
    except TimeoutError:
        raise JobTimedOut(f"The chat job {job.id} did not finish in time") from None
    if final.get("type") == "error":
        raise JobFailed(str(final.get("error") or "The chat job failed"))
    job = await _load(runtime, job.id)
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": slug,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": job.output or ""},
                "finish_reason": "stop",
            }
        ],
        "usage": token_usage(job),
    }


def _chunk(job: Job, slug: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
    return data_frame(
        {
            "id": f"chatcmpl-{job.id}",
            "object": "chat.completion.chunk",
            "created": int(job.created_at.timestamp()),
            "model": slug,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


async def _chunks(runtime: Runtime, job: Job, slug: str) -> AsyncIterator[bytes]:
    """OpenAI chunks: the role, one per token, a last one with `finish_reason` and usage, `[DONE]`."""
    metrics.open_streams.labels(kind="sse").inc()
    try:
        yield _chunk(job, slug, {"role": "assistant", "content": ""}, None)
        async for event in job_events(runtime, job.id, maybe_terminal=False):
            if event is None:
                yield KEEPALIVE
                continue
            payload = event.payload
            if payload["type"] == "token" and payload.get("content"):
                yield _chunk(job, slug, {"content": payload["content"]}, None)
            elif payload["type"] == "done":
                done = await _load(runtime, job.id)
                yield _chunk(job, slug, {}, "stop", usage=token_usage(done))
            elif payload["type"] == "error":
                yield _chunk(job, slug, {}, "error", error={"message": payload.get("error", "failed")})
        yield DONE_FRAME
    finally:
        metrics.open_streams.labels(kind="sse").dec()


@router.post(
    "/api/v1/chat/completions",
    response_model=schemas.ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **error_responses(401, 402, 403, 404, 422, 429, 502, 504),
    },
)
async def chat_completions(
    body: ChatRequest, request: Request, principal: Principal = Depends(require_write)
) -> Any:
    runtime = get_runtime(request)
    input = chat_input(body)
    slug = await chat_cargo(runtime, body.model)
    job = await jobs.submit_job(runtime, principal.user, slug, input)
    context.add(job_id=job.id)  # the streamed or awaited response's lines carry the job
    if body.stream:
        response: StreamingResponse = sse_response(_chunks(runtime, job, slug))
        return response
    return JSONResponse(await _complete(runtime, job, slug))
