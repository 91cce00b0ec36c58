"""The Cargo JSON-lines protocol (island-protocol §8.2): turning a workload's stdout lines into reports."""

from __future__ import annotations

import json
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


class JobFailed(Exception):
    """Ends a job with `failed` and this text as `error`."""


class Reporter(Protocol):
    """What a runtime may publish for its job (the agent adds job_id and the subject)."""

    async def status(self, state: str, error: str | None = None) -> None: ...
    async def output(self, seq: int, chunk: str, is_final: bool) -> None: ...
    async def progress(self, step: int, total: int) -> None: ...
    async def image(self, data: str, fmt: str, width: int, height: int, seed: int | None = None) -> None: ...


def cargo_stdin(value: Any) -> str:
    """The input as the Island re-serialises it for a Cargo: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _u32(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


class CargoLines:
    """Reads stdout lines of one run. `wasm` switches the two runtime differences: any first status line
    means `streaming` (container: only `ready`), and a `done` line emits the final chunk (container: the
    exit code does)."""

    def __init__(self, report: Reporter, *, wasm: bool) -> None:
        self.report = report
        self.wasm = wasm
        self.seq = 0
        self.streaming = False
        self.finished = False

    async def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            msg = json.loads(line)
        except ValueError:
            return  # not JSON: discarded like the Island does
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        if kind == "status" and isinstance(msg.get("message"), str):
            if not self.streaming and (self.wasm or msg["message"] == "ready"):
                self.streaming = True
                await self.report.status("streaming")
        elif kind == "token" and isinstance(msg.get("content"), str):
            self.seq += 1
            await self.report.output(self.seq, msg["content"], False)
        elif kind == "progress" and _u32(msg.get("step")) and _u32(msg.get("total")):
            await self.report.progress(msg["step"], msg["total"])
        elif kind == "image" and isinstance(msg.get("data"), str) and isinstance(msg.get("format"), str):
            if _u32(msg.get("width")) and _u32(msg.get("height")):
                await self.report.image(msg["data"], msg["format"], msg["width"], msg["height"])
        elif kind == "done" and self.wasm and not self.finished:
            await self.final_chunk()
        elif kind == "error":
            log.info("island.cargo_error", message=msg.get("message"))

    async def final_chunk(self) -> None:
        self.finished = True
        await self.report.output(self.seq + 1, "", True)
