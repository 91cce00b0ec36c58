"""Helpers of the streaming tests: a coordinator with pub/sub + accumulator + HTTP, jobs moved through
the jobs-core transitions, and the two SSE parsers of the official SDKs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from coordinator.app import HttpChild, NatsConnectionChild, build_runtime, job_children, streaming_children
from coordinator.jobs import lifecycle, moves, rules, service, wiring
from coordinator.jobs import repository as sql
from coordinator.jobs.events import JobRef
from coordinator.jobs.models import Job
from coordinator.jobs.output import OutputAccumulator, accumulator_of
from coordinator.runtime import Runtime
from coordinator.supervisor import Child, Supervisor
from tests.conftest import make_settings
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.job_support import make_island

FAST = {"output_flush_interval_seconds": 0.02, "sse_keepalive_seconds": 0.2}


@dataclass
class Stack:
    runtime: Runtime
    http: httpx.AsyncClient
    consumer: Consumer
    host_id: uuid.UUID
    children: list[Child] = field(default_factory=list)  # the supervised tree, in start order

    @property
    def accumulator(self) -> OutputAccumulator:
        sink = accumulator_of(self.runtime)  # this replica's, also under the cross-replica router
        assert isinstance(sink, OutputAccumulator)
        return sink


@asynccontextmanager
async def stream_stack(
    database_url: str,
    *,
    nats_url: str | None = None,
    jobs_pipeline: bool = False,
    seed: bool = True,
    runtimes: tuple[str, ...] = ("container", "wasm", "llmcpp", "onnx", "diffusers"),
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Pub/sub, accumulator and HTTP (plus, with `nats_url`, the NATS connection and pub/sub bridge;
    with `jobs_pipeline`, the dispatcher and Island handlers too)."""
    runtime = build_runtime(make_settings(database_url, nats_url=nats_url, **{**FAST, **overrides}))
    children: list[Child] = list(streaming_children(runtime))
    if nats_url:
        children.append(NatsConnectionChild(runtime))
        if jobs_pipeline:
            children.extend(job_children(runtime))
    children.append(HttpChild(runtime))
    supervisor = Supervisor(children)
    await supervisor.start()
    try:
        consumer = host_id = None
        if seed:
            await seed_cargos(runtime)
            consumer = await make_consumer(runtime, f"c{uuid.uuid4().hex[:8]}@example.com")
            host_id = (await make_island(runtime, runtimes=runtimes, vram_mb=16384)).id
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as client:
            yield Stack(runtime, client, consumer, host_id, children)  # type: ignore[arg-type]
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def set_runtime(runtime: Runtime, slug: str, runtime_name: str) -> None:
    from sqlalchemy import text

    async with runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE workloads SET runtime = :r WHERE slug = :s"), {"r": runtime_name, "s": slug}
        )


async def running_job(
    stack: Stack, slug: str = "llm-chat", input: dict[str, Any] | None = None, *, start: bool = True
) -> JobRef:
    """A submitted job moved queued → assigned (→ running) by the jobs-core queries and transitions."""
    job = await service.submit_job(stack.runtime, stack.consumer.user, slug, input or {"prompt": "Hi"})
    return await assign(stack, job.id, start=start)


async def assign(stack: Stack, job_id: uuid.UUID, *, start: bool = True) -> JobRef:
    """queued → assigned to the stack's Island (the dispatcher's query), then `started`."""
    async with stack.runtime.db.transaction() as session:
        ((_, result),), _ = await lifecycle.assign_in(
            session, [sql.AssignRow(job_id, stack.host_id, 600)], None
        )
    await lifecycle.after_commit(stack.runtime, session, [result])
    if start:
        inputs = lifecycle.Inputs(
            host_id=stack.host_id, extend_seconds=stack.runtime.settings.job_lease_seconds
        )
        assert await lifecycle.transition(stack.runtime, moves.START, job_id, inputs) is not None
    return await wiring.job_ref(stack.runtime, result)


async def newest_job(runtime: Runtime, user_id: int, *, within: float = 5.0) -> uuid.UUID:
    """The id of the user's latest job, waiting for it to be submitted."""
    from sqlalchemy import text

    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with runtime.db.session() as session:
            job_id = await session.scalar(
                text("SELECT id FROM jobs WHERE user_id = :u ORDER BY created_at DESC LIMIT 1"),
                {"u": user_id},
            )
        if job_id is not None:
            return uuid.UUID(str(job_id))
        assert asyncio.get_running_loop().time() < deadline, "no job was submitted"
        await asyncio.sleep(0.02)


async def finish(stack: Stack, ref: JobRef, state: str = "succeeded", error: str | None = None) -> None:
    """The end of a job as its Island reports it (`succeeded`/`failed` through the intake, which stores
    the stream's result with the move); a coordinator-decided end (cancelled, timeout) by its move."""
    if state in (rules.SUCCEEDED, rules.FAILED):
        before = await job_of(stack.runtime, ref.job_id)
        assert await stack.runtime.job_intake.status(stack.host_id, str(ref.job_id), state, error)
        after = await job_of(stack.runtime, ref.job_id)
        assert after.state != before.state and rules.is_terminal(after.state), (before.state, after.state)
        return
    result = await lifecycle.finish(stack.runtime, ref.job_id, state, error=error)
    assert result is not None


async def job_of(runtime: Runtime, job_id: uuid.UUID) -> Job:
    async with runtime.db.session() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    return job


# ---------------------------------------------------------------- the SDKs' ways of reading SSE


def parse_like_js(raw: str) -> list[dict[str, Any]]:
    """The TypeScript SDK: split on a blank line, keep blocks starting with `data: `, JSON-parse the rest."""
    events = []
    for block in raw.split("\n\n"):
        if block.startswith("data: "):
            events.append(json.loads(block[len("data: ") :]))
    return events


async def read_raw(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> tuple[int, str, str]:
    """Status, content type and the whole body (the server must close the stream after the end)."""
    async with client.stream("GET", path, headers=headers) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response.status_code, response.headers.get("content-type", ""), body.decode()


async def read_like_py(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The Python SDK: httpx-sse, JSON-parse every event's data until the connection ends."""
    events = []
    async with aconnect_sse(client, "GET", path, headers=headers) as source:
        async for sse in source.aiter_sse():
            events.append(json.loads(sse.data))
    return events
