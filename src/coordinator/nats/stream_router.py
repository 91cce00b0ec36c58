"""Cross-replica output routing: every job's events are produced by one replica, its stream owner.

The owner is the replica that assigned the job (`jobs.stream_owner`), else the first whose sink hears of it
(claimed once). Any other replica forwards the sink call (output, progress, image, status, result,
terminal) to the owner with a
core-NATS request on `coordinator.replica.<id>.sink`; when nobody answers there (the owner is gone) it
takes the job over with a guarded UPDATE and handles the call itself.
See docs/decisions/multi-replica-streaming.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from nats.errors import NoRespondersError

from coordinator.jobs import repository as sql
from coordinator.jobs.events import JobRef, OutputResult
from coordinator.jobs.output import OutputAccumulator, accumulator_of
from coordinator.runtime import Runtime
from coordinator.supervisor import Child

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT_SECONDS = 5.0
CACHE_LIMIT = 50_000


def sink_subject(replica_id: str) -> str:
    return f"coordinator.replica.{replica_id}.sink"


def encode_ref(ref: JobRef) -> dict[str, Any]:
    return {
        "job_id": str(ref.job_id),
        "user_id": ref.user_id,
        "workload_id": ref.workload_id,
        "workload_kind": ref.workload_kind,
        "runtime": ref.runtime,
        "host_id": str(ref.host_id) if ref.host_id else None,
        "created_at": ref.created_at.isoformat(),
        "prompt_chars": ref.prompt_chars,
        "new_stream": ref.new_stream,
    }


def decode_ref(data: dict[str, Any]) -> JobRef:
    host = data.get("host_id")
    return JobRef(
        uuid.UUID(data["job_id"]),
        int(data["user_id"]),
        int(data["workload_id"]),
        str(data["workload_kind"]),
        str(data["runtime"]),
        uuid.UUID(host) if host else None,
        datetime.fromisoformat(data["created_at"]),
        prompt_chars=data.get("prompt_chars"),
        new_stream=bool(data.get("new_stream")),
    )


async def call_local(local: OutputAccumulator, op: str, ref: JobRef, args: list[Any]) -> Any:
    """Apply one sink call to this replica's accumulator."""
    if op == "output":
        await local.on_output(ref, int(args[0]), str(args[1]), bool(args[2]))
    elif op == "progress":
        await local.on_progress(ref, int(args[0]), int(args[1]))
    elif op == "image":
        await local.on_image(ref, args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif op == "status":
        await local.on_status(ref, str(args[0]))
    elif op == "terminal":
        await local.on_terminal(ref, str(args[0]), args[1], args[2], float(args[3]))
    elif op == "result":
        result = await local.result(ref, float(args[0]))
        return [result.output, result.usage, result.complete]
    else:
        raise ValueError(f"unknown sink op {op!r}")
    return None


class StreamRouter:
    """`jobs.events.OutputSink` that runs every call on the job's stream owner (`local` is this replica's)."""

    def __init__(self, runtime: Runtime, local: OutputAccumulator, replica_id: str) -> None:
        self.runtime = runtime
        self.local = local
        self.replica_id = replica_id
        self._owners: dict[uuid.UUID, str] = {}

    async def owner(self, job_id: uuid.UUID, known: str | None = None) -> str:
        """The job's stream owner: cached, else `known` (from the transition that set it), else claimed."""
        owner = self._owners.get(job_id) or known
        if owner is None:
            for _ in range(3):
                async with self.runtime.db.transaction() as session:
                    owner = await session.scalar(
                        sql.CLAIM_STREAM_OWNER_SQL, {"id": job_id, "me": self.replica_id}
                    )
                if owner is not None:
                    break
            owner = owner or self.replica_id  # an unknown job (tests' bare refs): handle it here
        if job_id not in self._owners:
            if len(self._owners) >= CACHE_LIMIT:
                self._owners.clear()
            self._owners[job_id] = owner
        return owner

    async def _take_over(self, job_id: uuid.UUID, dead: str) -> None:
        async with self.runtime.db.transaction() as session:
            await session.execute(
                sql.TAKE_OVER_STREAM_SQL, {"id": job_id, "me": self.replica_id, "dead": dead}
            )
        self._owners.pop(job_id, None)
        log.warning("stream.owner_taken_over", job_id=str(job_id), previous=dead)

    async def _route(
        self, op: str, ref: JobRef, args: list[Any], wait: float = REQUEST_TIMEOUT_SECONDS
    ) -> Any:
        known = ref.stream_owner
        for _ in range(3):
            owner = await self.owner(ref.job_id, known)
            nc = self.runtime.nats
            if owner == self.replica_id or nc is None:
                return await call_local(self.local, op, ref, args)
            body = json.dumps({"op": op, "ref": encode_ref(ref), "args": args}).encode()
            try:
                reply = await nc.request(sink_subject(owner), body, timeout=wait)
            except NoRespondersError:
                await self._take_over(ref.job_id, owner)
                known = None
                continue
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RuntimeError(f"stream owner {owner} failed {op}: {answer['error']}")
            return answer.get("result")
        return await call_local(self.local, op, ref, args)

    async def on_output(self, job: JobRef, seq: int, chunk: str, is_final: bool) -> None:
        await self._route("output", job, [seq, chunk, is_final])

    async def on_progress(self, job: JobRef, step: int, total: int) -> None:
        await self._route("progress", job, [step, total])

    async def on_image(
        self, job: JobRef, image_data: str, format: str, width: int, height: int, seed: int | None
    ) -> None:
        await self._route("image", job, [image_data, format, width, height, seed])

    async def on_status(self, job: JobRef, public_status: str) -> None:
        await self._route("status", job, [public_status])

    async def on_terminal(
        self, job: JobRef, state: str, error: str | None, usage: dict[str, Any] | None, credits: float
    ) -> None:
        await self._route("terminal", job, [state, error, usage, credits])

    async def result(self, job: JobRef, wait: float) -> OutputResult:
        output, usage, complete = await self._route(
            "result", job, [wait], wait=wait + REQUEST_TIMEOUT_SECONDS
        )
        return OutputResult(output, usage, bool(complete))


class StreamRouterChild(Child):
    """Answers the sink calls other replicas forward here and installs the router as the output sink."""

    name = "stream_router"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, ready: Callable[[], None]) -> None:
        nc = self.runtime.nats
        local = accumulator_of(self.runtime)
        if nc is None:
            raise RuntimeError("NATS is not connected")
        if local is None:  # no accumulator in this process (the basic sink): nothing to route
            ready()
            await asyncio.Event().wait()
            return
        router = StreamRouter(self.runtime, local, self.runtime.pubsub.replica_id)

        async def answer(msg: Any) -> None:
            try:
                data = json.loads(msg.data)
                result = await call_local(router.local, data["op"], decode_ref(data["ref"]), data["args"])
                reply: dict[str, Any] = {"result": result}
            except Exception as exc:
                log.exception("stream.forwarded_call_failed", subject=msg.subject)
                reply = {"error": str(exc)}
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(reply).encode())

        async def on_message(msg: Any) -> None:
            # A result may wait for the last chunks, which arrive on this same subscription: run the
            # waits aside; everything else in arrival order.
            if b'"op": "result"' in msg.data:
                task = asyncio.get_running_loop().create_task(answer(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await answer(msg)

        sub = await nc.subscribe(sink_subject(router.replica_id), cb=on_message)
        await nc.flush()
        self.runtime.output = router
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            if self.runtime.output is router:
                self.runtime.output = local
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for task in list(self._tasks):
                task.cancel()
