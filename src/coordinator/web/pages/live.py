"""A job's events as Server-Sent Events of HTML fragments, for htmx's SSE extension (`sse-swap`).

The same replay-then-live stream as `/api/v1/jobs/{id}/stream` (web/sse.py), rendered for a page: each
event is one named SSE event whose data is the fragment to swap in; `end` closes the connection."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from jinja2 import Template
from starlette.responses import StreamingResponse

from coordinator.jobs import monitor, rules
from coordinator.jobs.models import Job
from coordinator.jobs.views import usage_of
from coordinator.pubsub import Event
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics
from coordinator.web.pages.base import TEMPLATES
from coordinator.web.sse import KEEPALIVE, SSE_HEADERS, job_events


def sse_event(name: str, html: str) -> bytes:
    """One named event; every line of the fragment gets its own `data:` line (EventSource rejoins them)."""
    lines = html.split("\n") or [""]
    return (f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def _fragment(name: str) -> Template:
    return TEMPLATES.env.get_template(f"fragments/{name}.html")


async def _job_row(runtime: Runtime, job_id: uuid.UUID) -> tuple[Job | None, int]:
    """The job's row and its reply's length in tokens."""
    async with runtime.db.read() as session:
        job = await session.get(Job, job_id)
        return job, (await monitor.reply_tokens(session, job) if job is not None else 0)


def render_event(event: Event) -> list[tuple[str, str]]:
    """The (event name, fragment) pairs a page swaps in for one job event (final events excepted)."""
    payload: dict[str, Any] = event.payload
    kind = payload.get("type")
    if kind == "token" and payload.get("content"):
        return [("token", _fragment("token").render(text=payload["content"], position=event.position))]
    if kind == "progress":
        return [
            ("progress", _fragment("progress").render(step=payload.get("step"), total=payload.get("total")))
        ]
    if kind == "image":
        return [("image", _fragment("image").render(image=payload))]
    if kind == "status":
        return [("status", _fragment("status").render(status=payload.get("content")))]
    return []


async def final_fragment(runtime: Runtime, job_id: uuid.UUID, event: Event) -> str:
    """What a page shows when the job ends: status, tokens and cost (from the settled row), the image's
    seed and download link, or the error."""
    job, tokens = await _job_row(runtime, job_id)
    payload = event.payload
    usage = dict(payload.get("usage") or {})
    if job is not None:
        usage = {**usage, **usage_of(job), "completion_tokens": tokens}
    return _fragment("final").render(
        ok=payload.get("type") == "done",
        error=payload.get("error"),
        usage=usage,
        job=job,
        status=rules.public_status(job.state) if job is not None else None,
        image=image_of(job) if job is not None else None,
    )


def image_of(job: Job) -> dict[str, Any] | None:
    """The image output of a finished image job (JSON with image_data, format, seed…), else None."""

    if not job.output or not job.output.startswith("{"):
        return None
    try:
        value = json.loads(job.output)
    except ValueError:
        return None
    if not isinstance(value, dict) or "image_data" not in value:
        return None
    if value.get("seed") is None and isinstance(job.input, dict):
        value["seed"] = job.input.get("seed")  # the Island did not report one: the seed it was asked for
    return value


async def live_body(runtime: Runtime, job_id: uuid.UUID, *, maybe_terminal: bool) -> AsyncIterator[bytes]:
    metrics.open_streams.labels(kind="sse").inc()
    try:
        async for event in job_events(runtime, job_id, maybe_terminal=maybe_terminal):
            if event is None:
                yield KEEPALIVE
                continue
            if event.is_final:
                yield sse_event("final", await final_fragment(runtime, job_id, event))
                yield sse_event("end", "")
                return
            chunk = b"".join(sse_event(name, html) for name, html in render_event(event))
            if chunk:
                yield chunk
    finally:
        metrics.open_streams.labels(kind="sse").dec()


def live_response(request: Request, runtime: Runtime, job: Job) -> StreamingResponse:
    body = live_body(runtime, job.id, maybe_terminal=rules.is_terminal(job.state))
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
