"""Lightweight SSE clients for benchmarks: raw asyncio streams, so a thousand fit in one process."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class SseCounter:
    expected: int
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def sse_client(
    host: str,
    port: int,
    path: str,
    counter: SseCounter,
    headers: dict[str, str] | None = None,
    sample_every: int = 10,
    connected: asyncio.Event | None = None,
    only: bytes | None = None,
) -> None:
    """Read `data:` frames until `counter.expected` arrived; record producer→client latency of a sample."""
    reader, writer = await asyncio.open_connection(host, port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
    await writer.drain()
    buffer = b""
    seen_headers = False
    try:
        while counter.received < counter.expected:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            if not seen_headers and b"\r\n\r\n" in buffer:
                seen_headers = True
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                if connected is not None:
                    connected.set()
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                start = frame.find(b"data: ")
                if start < 0 or (only is not None and only not in frame):
                    continue
                counter.received += 1
                if counter.received % sample_every == 0:
                    payload = frame[start + 6 :]
                    sent = _sent_at(payload)
                    if sent:
                        counter.latencies.append(time.time() - float(sent))
    finally:
        writer.close()
        counter.done.set()


def _sent_at(payload: bytes) -> float | None:
    """The producer's timestamp: a `t` field (baseline) or a token whose content starts with it."""
    try:
        event = json.loads(payload)
        if "t" in event:
            return float(event["t"])
        return float(str(event.get("content", "")).split()[0])
    except (ValueError, IndexError, TypeError, AttributeError):
        return None
