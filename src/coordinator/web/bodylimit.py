"""Refuses request bodies over the configured size with 413 in the error envelope, before any route runs.

A declared `Content-Length` over the limit is answered at once, without reading the body. A body sent
without one (chunked) is counted as the route reads it; once it passes the limit the read fails and the
route's answer is replaced by the 413, so nothing is charged for a body that was cut short."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.telemetry import metrics
from coordinator.web.errors import error_body


class BodyTooLarge(Exception):
    """Raised inside `receive` once a streamed body passes the limit (the route never sees all of it)."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> tuple[Message, Message]:
        body = orjson.dumps(
            error_body("payload_too_large", f"The request body is larger than {self.max_bytes} bytes")
        )
        start: Message = {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
        return start, {"type": "http.response.body", "body": body}

    async def _refuse(self, scope: Scope, send: Send) -> None:
        metrics.http_bodies_refused.inc()
        start, body = self._too_large()
        await send(start)
        await send(body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(scope, send)
                    return
        seen = 0
        overflowed = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, overflowed
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    overflowed = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if overflowed:
                # Whatever the route made of the failed read (400, 422, 500) becomes the one 413.
                if not replaced:
                    replaced = True
                    await self._refuse(scope, send)
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not replaced:
                replaced = True
                await self._refuse(scope, send)
