"""A bounded schemathesis run against the real API: uvicorn on a free port, real PostgreSQL, a seeded
admin account and its API key; every operation of the OpenAPI document is generated from (positive
and negative data) and each answer must be no server error (5xx) and conform to the document (status
code, content type, body schema). Bounded by examples per operation and a time budget, so it stays a
few minutes on a loaded two-core machine."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

from coordinator.app import HttpChild, build_runtime
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from tests.conftest import make_settings
from tests.factories import make_consumer, seed_cargos
from tests.job_support import make_island

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))
MAX_SECONDS = 150
CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello", "max_tokens": 16}}
# Per-key and per-address limits high enough that the operations are tested rather than answered 429
# (the magic-link limits stay: their 429 is part of what is checked).
LIMITS = {
    "rate_limit_per_minute": 1_000_000,
    "poll_rate_limit_per_minute": 1_000_000,
    "sign_in_per_address_per_minute": 1_000_000,
    "bad_credentials_per_address_per_minute": 1_000_000,
}


@pytest_asyncio.fixture
async def fuzz_server(database_url: str) -> AsyncIterator[Runtime]:
    runtime = build_runtime(make_settings(database_url, **LIMITS))
    supervisor = Supervisor([HttpChild(runtime)])
    await supervisor.start()
    try:
        yield runtime
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    fuzz_server: Runtime, tmp_path: Path
) -> None:
    runtime = fuzz_server
    await seed_cargos(runtime)
    consumer = await make_consumer(runtime, "fuzz@example.com", admin=True)
    island = await make_island(runtime, owner_id=consumer.user.id)
    async with httpx.AsyncClient(base_url=runtime.base_url, headers=consumer.headers) as client:
        job = await client.post("/api/v1/jobs", json=CHAT)
        assert job.status_code == 201, job.text
        # Cancelled, so its event stream ends at once instead of waiting out each request's timeout.
        cancelled = await client.delete(f"/api/v1/jobs/{job.json()['data']['id']}")
        assert cancelled.status_code == 200, cancelled.text
    # Real identifiers for the path parameters, so operations get past 404 to their logic.
    (tmp_path / "schemathesis.toml").write_text(
        "[parameters]\n"
        f'"path.job_id" = "{job.json()["data"]["id"]}"\n'
        f'"path.host_id" = "{island.id}"\n'
        f'"path.user_id" = {consumer.user.id}\n'
    )
    st = Path(sys.executable).with_name("st")
    process = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{runtime.base_url}/api/v1/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {consumer.key}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--seed",
        "18",
        "--request-timeout",
        "20",
        "--max-failures",
        "50",
        "--suppress-health-check",
        "all",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=MAX_SECONDS * 2)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text[-20_000:]
    async with httpx.AsyncClient(base_url=runtime.base_url) as client:
        document = (await client.get("/api/v1/openapi.json")).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Operations:       {operations} selected / {operations} total" in text, text[-5_000:]
    assert re.search(r"(\d+) generated, \1 passed", text), text[-5_000:]


async def test_an_admin_setting_the_publisher_of_a_missing_user_gets_404(fuzz_server: Runtime) -> None:
    """Found by the run above: a foreign-key violation answered 500."""
    admin = await make_consumer(fuzz_server, "admin@example.com", admin=True)
    async with httpx.AsyncClient(base_url=fuzz_server.base_url, headers=admin.headers) as client:
        answer = await client.put("/api/v1/admin/marketplace/publishers/0", json={"cargo_limit": 3})
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
        mine = await client.put(
            f"/api/v1/admin/marketplace/publishers/{admin.user.id}", json={"cargo_limit": 3}
        )
        assert mine.status_code == 200, mine.text
