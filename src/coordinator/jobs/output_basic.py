"""A minimal output sink for a process that does not stream (the worker): keeps chunks in memory by seq
and assembles the result the terminal move stores. It persists and broadcasts nothing; the coordinator
process replaces it with the accumulator (`jobs/output.py`) as `runtime.output`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from coordinator.jobs.events import JobRef, OutputResult
from coordinator.runtime import Runtime

# How long a finished job's chunks are kept (late duplicates are ignored meanwhile).
FORGET_AFTER_SECONDS = 6.0


@dataclass
class _Buffer:
    chunks: dict[int, str] = field(default_factory=dict)
    image: str | None = None
    # Set when the last piece of output (final chunk or image) has arrived.
    complete: asyncio.Event = field(default_factory=asyncio.Event)


class BasicOutput:
    """Concatenates chunks in seq order; an image becomes the JSON string the SDKs decode."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._buffers: dict[uuid.UUID, _Buffer] = {}

    def _buffer(self, job: JobRef) -> _Buffer:
        return self._buffers.setdefault(job.job_id, _Buffer())

    @staticmethod
    def _visible(job: JobRef, chunk: str, is_final: bool) -> str:
        # GGUF's final chunk is a JSON "done" event, not text the user should see.
        return "" if is_final and job.runtime == "llmcpp" else chunk

    def assemble(self, job: JobRef) -> str:
        buffer = self._buffer(job)
        if buffer.image is not None:
            return buffer.image
        return "".join(buffer.chunks[seq] for seq in sorted(buffer.chunks))

    async def on_output(self, job: JobRef, seq: int, chunk: str, is_final: bool) -> None:
        buffer = self._buffer(job)
        buffer.chunks.setdefault(seq, self._visible(job, chunk, is_final))
        if is_final:
            buffer.complete.set()

    async def result(self, job: JobRef, wait: float) -> OutputResult:
        """What has arrived, once the last piece came (or after `wait` seconds) when some output has come
        at all. It never holds a success back (complete is always true): it does not track gaps."""
        buffer = self._buffers.get(job.job_id)
        if buffer is not None and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(buffer.complete.wait(), wait)
        return OutputResult(self.assemble(job) or None, {}, True)

    async def on_progress(self, job: JobRef, step: int, total: int) -> None:
        return None

    async def on_image(
        self, job: JobRef, image_data: str, format: str, width: int, height: int, seed: int | None
    ) -> None:
        image: dict[str, Any] = {"image_data": image_data, "format": format, "width": width, "height": height}
        if seed is not None:
            image["seed"] = seed
        buffer = self._buffer(job)
        buffer.image = json.dumps(image, separators=(",", ":"))
        buffer.complete.set()

    async def on_status(self, job: JobRef, public_status: str) -> None:
        return None

    async def on_terminal(
        self, job: JobRef, state: str, error: str | None, usage: dict[str, Any] | None, credits: float
    ) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(FORGET_AFTER_SECONDS, self._buffers.pop, job.job_id, None)
