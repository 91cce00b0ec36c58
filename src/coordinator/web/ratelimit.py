"""Per-API-key request quotas on every authenticated request, with the `X-RateLimit-*` headers, and the
limits that need no key (magic links per e-mail and per client address, sign-ins and failed credentials per
client address).

`enforce` is called by the auth dependency; `RateLimitHeaders` (pure ASGI middleware, safe for SSE) copies
the window of the request onto its response, errors included."""

from __future__ import annotations

import hashlib
import re
import time

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.accounts.service import Principal
from coordinator.billing import quotas
from coordinator.errors import RateLimited
from coordinator.runtime import Runtime
from coordinator.telemetry import metrics

STATE_KEY = "rate_limit"
# Polling one's own job (SDKs poll every 1–2 s) has its own, larger allowance.
_POLL_PATH = re.compile(r"^/api/v1/jobs/[^/]+(/batch-status)?$")


def bucket_for(request: Request, principal: Principal) -> tuple[str, bool]:
    who = f"key:{principal.api_key_id}" if principal.api_key_id else f"user:{principal.user.id}"
    poll = request.method == "GET" and bool(_POLL_PATH.match(request.url.path))
    return (f"poll:{who}" if poll else who), poll


async def enforce(request: Request, principal: Principal) -> None:
    """Count this request; raise 429 (integer Retry-After) once the key's minute is used up."""
    if getattr(request.state, STATE_KEY, None) is not None:
        return  # already counted (nested auth dependencies)
    runtime: Runtime = request.app.state.runtime
    bucket, poll = bucket_for(request, principal)
    settings = runtime.settings
    limit = settings.poll_rate_limit_per_minute if poll else settings.rate_limit_per_minute
    window = runtime.rate_counter.hit(bucket, limit)
    setattr(request.state, STATE_KEY, window)
    if window.exceeded:
        raise RateLimited(
            f"Rate limit exceeded: {limit} requests per minute; retry later",
            window.retry_after(time.time()),
            window.headers(),
        )


def client_address(request: Request) -> str:
    """The peer's address (behind a proxy, run uvicorn with `--proxy-headers` so this is the client's)."""
    return request.client.host if request.client else "unknown"


def _refuse(limit_name: str, window: quotas.RateWindow, what: str) -> RateLimited:
    metrics.http_rate_limited.labels(limit_name).inc()
    return RateLimited(f"Too many {what}; retry later", window.retry_after(time.time()), window.headers())


def limit_anonymous(request: Request, limit_name: str, bucket: str, limit: int, what: str) -> None:
    """Count one keyless request against `bucket` (`h:` prefix: hourly window); 429 once over `limit`."""
    window = request.app.state.runtime.rate_counter.hit(bucket, limit)
    if window.exceeded:
        raise _refuse(limit_name, window, what)


def limit_magic_links(request: Request, email: str) -> None:
    """Sign-in mails: a cap per client address and per recipient (the address is hashed, not stored)."""
    settings = request.app.state.runtime.settings
    limit_anonymous(
        request,
        "magic_link_address",
        f"{quotas.HOUR_PREFIX}magic-ip:{client_address(request)}",
        settings.magic_link_per_address_per_hour,
        "sign-in links requested from this address",
    )
    recipient = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    limit_anonymous(
        request,
        "magic_link_email",
        f"{quotas.HOUR_PREFIX}magic-mail:{recipient}",
        settings.magic_link_per_email_per_hour,
        "sign-in links requested for this e-mail address",
    )


def limit_sign_ins(request: Request) -> None:
    limit_anonymous(
        request,
        "sign_in_address",
        f"sign-in-ip:{client_address(request)}",
        request.app.state.runtime.settings.sign_in_per_address_per_minute,
        "sign-in attempts from this address",
    )


def _bad_credentials_bucket(request: Request) -> str:
    return f"bad-credentials-ip:{client_address(request)}"


def refuse_if_guessing(request: Request) -> None:
    """Before checking a credential: an address that failed too often this minute is refused unchecked."""
    runtime: Runtime = request.app.state.runtime
    limit = runtime.settings.bad_credentials_per_address_per_minute
    counter = runtime.rate_counter
    bucket = _bad_credentials_bucket(request)
    if counter.count(bucket) >= limit:
        window = counter.hit(bucket, limit)
        raise _refuse("bad_credentials_address", window, "failed sign-ins from this address")


def count_bad_credentials(request: Request) -> None:
    request.app.state.runtime.rate_counter.hit(
        _bad_credentials_bucket(request),
        request.app.state.runtime.settings.bad_credentials_per_address_per_minute,
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
