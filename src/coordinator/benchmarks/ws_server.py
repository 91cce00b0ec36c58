"""A bare Starlette WebSocket broadcaster (the baseline the channel fan-out is compared with).

Run as `python -m coordinator.benchmarks.ws_server PORT`; clients connect to /ws, then POST /publish?n=N
sends N frames shaped like channel pushes to every client (one queue and one sender per client, as
the channel's per-join task does), under the same uvicorn as the coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

clients: set[asyncio.Queue[str | None]] = set()


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    clients.add(queue)

    async def drain() -> None:  # notice the client closing
        with contextlib.suppress(Exception):
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        queue.put_nowait(None)

    reader = asyncio.create_task(drain())
    try:
        while (item := await queue.get()) is not None:
            await websocket.send_text(item)
    finally:
        clients.discard(queue)
        reader.cancel()


async def publish(request: Request) -> JSONResponse:
    n = int(request.query_params.get("n", "100"))
    for i in range(n):
        frame = (
            f'["1",null,"job:x","token",{{"type":"token","content":"tok{i}","t":{time.time()},"seq":{i}}}]'
        )
        for queue in clients:
            queue.put_nowait(frame)
        if i % 50 == 0:
            await asyncio.sleep(0)
    return JSONResponse({"clients": len(clients), "events": n})


async def count(request: Request) -> JSONResponse:
    return JSONResponse({"clients": len(clients)})


app = Starlette(
    routes=[WebSocketRoute("/ws", ws), Route("/publish", publish, methods=["POST"]), Route("/count", count)]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop")
