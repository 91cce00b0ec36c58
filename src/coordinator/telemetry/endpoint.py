"""`/metrics` on its own port, for processes without the HTTP API (`coordinator worker`).

Open in development and test; in production only the metrics token opens it (no database lookups here)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import Receive, Scope, Send

from coordinator.config import Settings
from coordinator.runtime import Runtime
from coordinator.supervisor import Child
from coordinator.telemetry import exposition


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), "")


def authorized(settings: Settings, scope: Scope) -> bool:
    if settings.is_dev:
        return True
    scheme, _, token = _header(scope, b"authorization").partition(" ")
    expected = settings.metrics_token
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), (expected or "").encode())
    )


class ScrapeApp:
    """A bare ASGI app: `GET /metrics` and nothing else, errors in the API's envelope."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await self._error(send, 404, "not_found", "Not found")
        elif not authorized(self.settings, scope):
            await self._error(send, 401, "unauthorized", "Metrics require the metrics token")
        else:
            body, content_type = exposition.render(_header(scope, b"accept"))
            await self._send(send, 200, content_type, body)

    async def _error(self, send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        await self._send(send, status, "application/json", body)

    @staticmethod
    async def _send(send: Send, status: int, content_type: str, body: bytes) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _QuietServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the supervisor owns signals
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsEndpointChild(Child):
    """Serves `ScrapeApp` on `COORDINATOR_METRICS_PORT` (bound to `COORDINATOR_HOST`)."""

    name = "metrics_endpoint"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.server: _QuietServer | None = None

    async def run(self, ready: Callable[[], None]) -> None:
        settings = self.runtime.settings
        config = uvicorn.Config(
            ScrapeApp(settings),
            host=settings.host,
            port=settings.metrics_port or 0,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self.server = server = _QuietServer(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if serving.done():
                    await serving
                    raise RuntimeError("metrics endpoint stopped during start-up")
                await asyncio.sleep(0.02)
            ready()
            await serving
        finally:
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(serving), 5)
