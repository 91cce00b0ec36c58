"""Per-API-key request quotas on every authenticated request, with the `X-RateLimit-*` headers.

`enforce` is called by the auth dependency; `RateLimitHeaders` (pure ASGI middleware, safe for SSE) copies
the window of the request onto its response, errors included."""

from __future__ import annotations

import re
import time

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.accounts.service import Principal
from coordinator.billing import quotas
from coordinator.errors import RateLimited
from coordinator.runtime import Runtime

STATE_KEY = "rate_limit"
COUNTER_COMPONENT = "rate_counter"
# Polling one's own job (SDKs poll every 1–2 s) has its own, larger allowance.
_POLL_PATH = re.compile(r"^/api/v1/jobs/[^/]+(/batch-status)?$")


def bucket_for(request: Request, principal: Principal) -> tuple[str, bool]:
    who = f"key:{principal.api_key_id}" if principal.api_key_id else f"user:{principal.user.id}"
    poll = request.method == "GET" and bool(_POLL_PATH.match(request.url.path))
    return (f"poll:{who}" if poll else who), poll


def rate_counter(runtime: Runtime) -> quotas.RateCounter:
    """This replica's request counter (flushed to PostgreSQL by `RateCounterSync` in the HTTP subtree)."""
    counter = runtime.components.get(COUNTER_COMPONENT)
    if counter is None:
        counter = runtime.components[COUNTER_COMPONENT] = quotas.RateCounter()
    return counter  # type: ignore[no-any-return]


async def enforce(request: Request, principal: Principal) -> None:
    """Count this request; raise 429 (integer Retry-After) once the key's minute is used up."""
    if getattr(request.state, STATE_KEY, None) is not None:
        return  # already counted (nested auth dependencies)
    runtime: Runtime = request.app.state.runtime
    bucket, poll = bucket_for(request, principal)
    settings = runtime.settings
    limit = settings.poll_rate_limit_per_minute if poll else settings.rate_limit_per_minute
    window = rate_counter(runtime).hit(bucket, limit)
    setattr(request.state, STATE_KEY, window)
    if window.exceeded:
        raise RateLimited(
            f"Rate limit exceeded: {limit} requests per minute; retry later",
            window.retry_after(time.time()),
            window.headers(),
        )


class RateLimitHeaders:
    """Adds `X-RateLimit-Limit/Remaining/Reset` to every response whose request was counted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                window = scope.get("state", {}).get(STATE_KEY)
                if isinstance(window, quotas.RateWindow):
                    headers = list(message.get("headers", []))
                    present = {k.lower() for k, _ in headers}
                    for name, value in window.headers().items():
                        if name.lower().encode() not in present:
                            headers.append((name.lower().encode(), value.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
