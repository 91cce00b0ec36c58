"""The official `phoenix` npm client, run by Node (`tests/js/driver.js`), driven from a test.

Commands go to the driver as JSON lines; everything the client sees comes back as JSON-line events,
collected in `events`. `wait_for` polls them to a deadline (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
Event = dict[str, Any]


class PhoenixClient:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[Event] = []
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    async def start(self) -> PhoenixClient:
        node = shutil.which("node")
        assert node is not None, "Node is required (tests/js)"
        assert (JS_DIR / "node_modules" / "phoenix").exists(), "run `make js-deps` (npm ci in tests/js)"
        self.proc = await asyncio.create_subprocess_exec(
            node,
            str(JS_DIR / "driver.js"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=JS_DIR,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))
            self._changed.set()

    async def send(self, cmd: str, **fields: Any) -> str:
        assert self.proc is not None and self.proc.stdin is not None
        ident = fields.pop("id", None) or f"c{next(self._ids)}"
        self.proc.stdin.write((json.dumps({"cmd": cmd, "id": ident, **fields}) + "\n").encode())
        await self.proc.stdin.drain()
        return ident

    async def wait_for(self, check: Callable[[Event], bool], within: float = 15.0) -> Event:
        """The first event (already seen or arriving) for which `check` holds."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for event in self.events[seen:]:
                if check(event):
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {within}s; events: {self.events[-20:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    # ------------------------------------------------------------ the client's calls

    async def connect(self, base_url: str, token: str, **options: Any) -> Event:
        url = base_url.replace("http://", "ws://") + "/socket"
        await self.send("connect", url=url, params={"token": token}, **options)
        return await self.wait_for(lambda e: e["ev"] in ("socket_open", "socket_close", "socket_error"))

    async def join(self, topic: str, params: dict[str, Any] | None = None) -> Event:
        ident = await self.send("join", topic=topic, params=params or {})
        return await self.wait_for(
            lambda e: e.get("id") == ident and e["ev"] in ("join_ok", "join_error", "join_timeout")
        )

    async def push(self, topic: str, event: str, payload: dict[str, Any] | None = None) -> Event:
        ident = await self.send("push", topic=topic, event=event, payload=payload or {})
        return await self.wait_for(lambda e: e.get("id") == ident and e["ev"] == "push_reply")

    def messages(self, topic: str, event: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e["ev"] == "message" and e["topic"] == topic and (event is None or e["event"] == event)
        ]

    async def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self.send("exit")
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
        self.proc = None
