"""A minimal output sink: keeps chunks in memory by seq and writes `jobs.output` when the job ends.

The streaming work (ordered persistence to `job_events`, pub/sub, SSE) replaces it with a full
accumulator as `runtime.output`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from coordinator.jobs.events import JobRef
from coordinator.runtime import Runtime

# Stores the assembled output of a job (a late chunk after the terminal status rewrites it).
WRITE_OUTPUT_SQL = text("UPDATE jobs SET output = :output WHERE id = :id")

# How long after the terminal status the last chunks may still arrive (status can overtake output).
GRACE_SECONDS = 0.3


@dataclass
class _Buffer:
    chunks: dict[int, str] = field(default_factory=dict)
    image: str | None = None
    finished: bool = False
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
        if buffer.finished:
            await self._write(job)

    async def final_output(self, job: JobRef, wait: float) -> str | None:
        """The assembled output once its last piece arrived (or after `wait` seconds): status can overtake
        output, and the terminal transition stores this in the same transaction."""
        buffer = self._buffer(job)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(buffer.complete.wait(), wait)
        return self.assemble(job) or None

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
        if buffer.finished:
            await self._write(job)

    async def on_status(self, job: JobRef, public_status: str) -> None:
        return None

    async def on_terminal(
        self, job: JobRef, state: str, error: str | None, usage: dict[str, Any] | None
    ) -> None:
        buffer = self._buffer(job)
        buffer.finished = True
        await self._write(job)
        asyncio.get_running_loop().call_later(GRACE_SECONDS * 20, self._buffers.pop, job.job_id, None)

    async def _write(self, job: JobRef) -> None:
        output = self.assemble(job)
        if not output:
            return
        async with self.runtime.db.transaction() as session:
            await session.execute(WRITE_OUTPUT_SQL, {"id": job.job_id, "output": output})
