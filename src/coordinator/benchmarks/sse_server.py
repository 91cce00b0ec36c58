"""A bare Starlette SSE broadcaster (the baseline our streaming path is compared with).

Run as `python -m coordinator.benchmarks.sse_server PORT`; clients GET /stream, then POST /publish?n=N
sends N events to every connected client as fast as the loop allows (`&pace=S`: one every S seconds)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

clients: set[asyncio.Queue[bytes | None]] = set()


async def stream(request: Request) -> StreamingResponse:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    clients.add(queue)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            while (item := await queue.get()) is not None:
                yield item
        finally:
            clients.discard(queue)

    return StreamingResponse(body(), media_type="text/event-stream")


async def publish(request: Request) -> JSONResponse:
    n = int(request.query_params.get("n", "100"))
    pace = float(request.query_params.get("pace", "0"))
    for i in range(n):
        frame = f'data: {{"type":"token","content":"tok{i}","t":{time.time()}}}\n\n'.encode()
        for queue in clients:
            queue.put_nowait(frame)
        if pace:
            await asyncio.sleep(pace)
        elif i % 50 == 0:
            await asyncio.sleep(0)
    return JSONResponse({"clients": len(clients), "events": n})


async def count(request: Request) -> JSONResponse:
    return JSONResponse({"clients": len(clients)})


app = Starlette(
    routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"]), Route("/count", count)]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop")
