"""Pure ASGI middleware: request id in and out, per-route request duration, one access log line.

Pure ASGI (not BaseHTTPMiddleware) so SSE and other streamed responses pass through unbuffered; the
duration of a stream is its whole life."""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.telemetry import context, metrics

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED_ROUTE = "unmatched"
# Scrapes and probes would drown the access log; they are still measured.
QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/jobs/{id}`), never the raw path (unbounded labels)."""
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else UNMATCHED_ROUTE


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            accepted = context.clean_id(value.decode("latin-1"))
            if accepted is not None:
                return accepted
    return context.new_request_id()


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        with context.bind(request_id=request_id):
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send, request_id.encode("latin-1"))

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: bytes) -> None:
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == REQUEST_ID_HEADER for name, _ in headers):
                    headers.append((REQUEST_ID_HEADER, request_id))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope.get("method", "GET")
            metrics.http_request_seconds.labels(method=method, route=route, status=str(status)).observe(
                elapsed
            )
            quiet = scope.get("path") in QUIET_PATHS and status < 500
            (log.debug if quiet else log.info)(
                "http.request",
                method=method,
                route=route,
                path=scope.get("path"),
                status=status,
                duration_ms=round(elapsed * 1000, 1),
            )
