"""Correlation ids: from an HTTP header into log lines, across NATS, into background jobs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import nats
import pytest
import structlog
import uvicorn
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY

from coordinator.app import WorkerChild
from coordinator.devstack import free_port
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.telemetry import context
from coordinator.telemetry.logging import configure_logging
from coordinator.web.app import create_app as create_web_app
from coordinator.workers.app import _timed, create_app
from tests.telemetry_support import captured_logs


async def test_a_handler_log_line_carries_the_request_id_from_the_header(http: httpx.AsyncClient) -> None:
    with captured_logs() as logs:
        response = await http.post(
            "/api/v1/auth/magic-link",
            json={"email": "a@example.com"},
            headers={"X-Request-ID": "req-abc-123"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-abc-123"
    outbox = [line for line in logs if line["event"] == "email.outbox"]
    assert len(outbox) == 1 and outbox[0]["request_id"] == "req-abc-123"
    access = [line for line in logs if line["event"] == "http.request"]
    assert access[0]["request_id"] == "req-abc-123" and access[0]["route"] == "/api/v1/auth/magic-link"


async def test_a_request_without_an_id_gets_a_fresh_one(http: httpx.AsyncClient) -> None:
    with captured_logs() as logs:
        first = await http.post("/api/v1/auth/magic-link", json={"email": "b@example.com"})
        unsafe = await http.post(
            "/api/v1/auth/magic-link",
            json={"email": "c@example.com"},
            headers={"X-Request-ID": "not safe; spaces"},
        )
    ids = [first.headers["x-request-id"], unsafe.headers["x-request-id"]]
    assert all(len(i) == 32 for i in ids) and ids[0] != ids[1]
    assert [line["request_id"] for line in logs if line["event"] == "email.outbox"] == ids
    # Nothing stays bound once the request is over.
    assert context.current_ids() == {}


def test_bind_restores_the_previous_ids_and_drops_what_was_added_inside() -> None:
    with context.bind(request_id="r1"):
        with context.bind(job_id="j1", host_id=None):
            context.add(user_id=7)
            assert context.current_ids() == {"request_id": "r1", "job_id": "j1", "user_id": "7"}
        assert context.current_ids() == {"request_id": "r1"}
    assert context.current_ids() == {}


async def test_ids_survive_a_core_nats_round_trip(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        subject = f"telemetry.test.{uuid.uuid4().hex}"
        sub = await nc.subscribe(subject)
        job_id = str(uuid.uuid4())
        with context.bind(request_id="req-nats-1", job_id=job_id):
            await nc.publish(subject, b"{}", headers=context.nats_headers())
        msg = await sub.next_msg(timeout=5)
        with captured_logs() as logs, context.bind_from_nats(msg, host_id="host-9") as bound:
            structlog.get_logger("test").info("handled")
        assert bound == {"request_id": "req-nats-1", "job_id": job_id, "host_id": "host-9"}
        assert logs[0]["request_id"] == "req-nats-1" and logs[0]["job_id"] == job_id
        assert context.current_ids() == {}
    finally:
        await nc.close()


async def test_ids_survive_a_jetstream_round_trip(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    stream = f"TELEMETRY_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    try:
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        with context.bind(request_id="req-js-1", workload_id="llm-chat"):
            await js.publish(f"{stream}.x", b"{}", headers=context.nats_headers({"Nats-Msg-Id": "m1"}))
        sub = await js.pull_subscribe(f"{stream}.x", durable="t")
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
        with context.bind_from_nats(msg) as bound:
            assert bound == {"request_id": "req-js-1", "workload_id": "llm-chat"}
    finally:
        await js.delete_stream(stream)
        await nc.close()


def test_unsafe_header_values_are_not_bound() -> None:
    headers = {"x-request-id": "ok-1", "X-Job-ID": "evil\nline", "X-Host-ID": "h" * 200}
    assert context.ids_from_headers(headers) == {"request_id": "ok-1"}


def _runs(worker: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("coordinator_worker_runs_total", {"worker": worker, "outcome": outcome})
        or 0
    )


async def test_timed_counts_a_failing_run_as_a_failure() -> None:
    async def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    async def fine() -> dict[str, Any]:
        return {"done": 1}

    failures, successes = _runs("t_flaky", "failure"), _runs("t_flaky", "success")
    durations = (
        REGISTRY.get_sample_value("coordinator_worker_duration_seconds_count", {"worker": "t_flaky"}) or 0
    )
    with captured_logs() as logs, pytest.raises(RuntimeError, match="boom"):
        await _timed("t_flaky", broken)
    assert _runs("t_flaky", "failure") == failures + 1
    assert _runs("t_flaky", "success") == successes
    assert logs[0]["event"] == "worker.failed" and logs[0]["worker"] == "t_flaky"
    assert await _timed("t_flaky", fine) == {"done": 1}
    assert _runs("t_flaky", "success") == successes + 1
    count = REGISTRY.get_sample_value("coordinator_worker_duration_seconds_count", {"worker": "t_flaky"})
    assert count == durations + 2


async def test_a_real_background_job_logs_with_its_correlation_ids(runtime: Runtime) -> None:
    supervisor = Supervisor([WorkerChild(runtime)])
    with captured_logs() as logs:
        await supervisor.start()
        try:
            app = create_app(runtime.settings.libpq_database_url)
            async with app.open_async():
                await app.tasks["workload_scan"].defer_async(workload_id=4242)
            for _ in range(100):
                if any(line.get("worker") == "workload_scan" for line in logs):
                    break
                await asyncio.sleep(0.05)
        finally:
            await supervisor.stop()
    [ran] = [line for line in logs if line["event"] == "worker.ran" and line["worker"] == "workload_scan"]
    assert (
        ran["workload_id"] == "4242" and ran["worker"] == "workload_scan" and ran["task"] == "workload_scan"
    )
    assert _runs("workload_scan", "success") >= 1


@contextlib.contextmanager
def configured_logging() -> Iterator[None]:
    """Configure logging inside the block; structlog's defaults and the root logger are restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_production_logs_are_json_lines_with_the_ids() -> None:
    buffer = io.StringIO()
    with configured_logging():
        configure_logging("INFO", "json", dev=False, stream=buffer)
        with context.bind(request_id="req-json-1", job_id="job-1"):
            structlog.get_logger("coordinator.test").info("ours", answer=42)
            logging.getLogger("some.library").warning("theirs")
    ours, theirs = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert ours["event"] == "ours" and ours["answer"] == 42 and ours["level"] == "info"
    assert theirs["event"] == "theirs" and theirs["level"] == "warning"
    assert ours["logger"] == "coordinator.test" and theirs["logger"] == "some.library"
    for line in (ours, theirs):
        assert line["request_id"] == "req-json-1" and line["job_id"] == "job-1" and "timestamp" in line


def test_lines_below_the_level_are_not_written_and_an_exception_is_one_json_line() -> None:
    buffer = io.StringIO()
    with configured_logging():
        configure_logging("WARNING", "json", dev=False, stream=buffer)
        ours = structlog.get_logger("coordinator.test")
        ours.info("not written")
        ours.debug("nor this")
        logging.getLogger("some.library").info("nor theirs")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            ours.exception("it failed", job="j-1")
        ours.warning("written", n=1)
    failed, written = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert failed["event"] == "it failed" and failed["level"] == "error" and failed["job"] == "j-1"
    assert "RuntimeError: boom" in failed["exception"] and "Traceback" in failed["exception"]
    assert written["event"] == "written" and written["level"] == "warning" and written["n"] == 1
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", "json", stream=io.StringIO())


def test_a_logger_used_before_a_reconfiguration_writes_where_the_new_one_says() -> None:
    first, second = io.StringIO(), io.StringIO()
    with configured_logging():
        configure_logging("INFO", "json", stream=first)
        ours = structlog.get_logger("coordinator.cached")
        ours.info("one")  # cached on first use
        configure_logging("INFO", "json", stream=second)
        ours.info("two")
        logging.getLogger("some.library").warning("three")
    assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == ["one"]
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == ["two", "three"]


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve an app built by `create_app` (plus test routes) on a free port with real uvicorn."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_an_unhandled_error_still_carries_the_request_id(runtime: Runtime) -> None:
    app = create_web_app(runtime)

    async def explode() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/_test/explode", explode)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        with captured_logs() as logs:
            response = await client.get("/_test/explode", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"] == "req-500"
    [error] = [line for line in logs if line["event"] == "http.unhandled_error"]
    assert error["request_id"] == "req-500"
    [access] = [line for line in logs if line["event"] == "http.request"]
    assert access["status"] == 500 and access["route"] == "/_test/explode"


async def test_a_streamed_response_is_not_buffered(runtime: Runtime) -> None:
    app = create_web_app(runtime)
    release = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await release.wait()
        yield b"data: last\n\n"

    async def stream() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_api_route("/_test/stream", stream)
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url) as client,
        client.stream("GET", "/_test/stream") as response,
    ):
        chunks = response.aiter_bytes()
        # The first event arrives while the stream is still open: nothing in between buffers it.
        first = await asyncio.wait_for(chunks.__anext__(), timeout=5)
        assert first.startswith(b"data: first")
        assert response.headers["x-request-id"]
        release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert b"data: last" in rest
