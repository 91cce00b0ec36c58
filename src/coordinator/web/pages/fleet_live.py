"""The fleet page's live table: Server-Sent Events of the rendered table, pushed when the fleet changes.

An operator action (this page, the admin API, an Island's socket joining or leaving) publishes on the
`admin:fleet` topic of the process pub/sub (bridged across replicas), which wakes every open stream at
once; changes no one announces (a heartbeat bringing an Island online, the liveness sweep taking one
offline) are caught by re-reading the table every second and sending it only when it differs. The
heartbeat ages are refreshed every few seconds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import StreamingResponse

from coordinator.pubsub import SubscriberOverflow
from coordinator.runtime import Runtime
from coordinator.web.fleet_events import FLEET_TOPIC
from coordinator.web.pages.base import TEMPLATES
from coordinator.web.pages.live import sse_event
from coordinator.web.sse import SSE_HEADERS

CHECK_SECONDS = 1.0
REFRESH_SECONDS = 5.0


def fingerprint(context: dict[str, Any]) -> tuple[Any, ...]:
    """What the table shows apart from the heartbeat ages (those are refreshed on a timer)."""
    rows = context["islands"]
    assert isinstance(rows, list)
    return tuple(
        (str(r["host"].id), r["host"].status, r["host"].approved, r["host"].active_jobs, r["host"].karma)
        for r in rows
    )


async def fleet_stream(
    request: Request, runtime: Runtime, load: Callable[[], Awaitable[dict[str, Any]]]
) -> AsyncIterator[bytes]:
    template = TEMPLATES.env.get_template("fragments/fleet_table.html")
    pubsub = runtime.pubsub
    sub = pubsub.subscribe(FLEET_TOPIC)
    last: tuple[Any, ...] | None = None
    sent_at = time.monotonic()
    try:
        while not await request.is_disconnected():
            context = await load()
            current = fingerprint(context)
            if current != last or time.monotonic() - sent_at >= REFRESH_SECONDS:
                yield sse_event("fleet", template.render(context))
                last, sent_at = current, time.monotonic()
            try:
                while await sub.get(wait=CHECK_SECONDS) is not None and sub.queue.qsize():
                    pass  # a burst of announcements is one re-read
            except SubscriberOverflow:
                sub.close()
                sub = pubsub.subscribe(FLEET_TOPIC)
    finally:
        sub.close()


def fleet_live_response(
    request: Request, runtime: Runtime, load: Callable[[], Awaitable[dict[str, Any]]]
) -> StreamingResponse:
    return StreamingResponse(
        fleet_stream(request, runtime, load), media_type="text/event-stream", headers=SSE_HEADERS
    )
