"""The registry end to end: a developer submits Cargos whose images sit in a real OCI registry, the
WorkloadScan worker scans them, an admin reviews, consumers run the published Cargo on the reference
Island over NATS, and reputation moves it up, then down to suspension."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest_asyncio

from coordinator.app import build_children
from coordinator.marketplace import reputation
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from island.agent import Island, IslandConfig
from island.runtimes import RuntimeOptions
from tests import oci_support
from tests.conftest import make_settings
from tests.factories import Consumer, make_consumer
from tests.islands_support import eventually
from tests.oci_support import DEBIAN_12, Registry, dpkg_status, new_key, osv, write_advisories
from tests.registry_support import create_submission, submission, submit, verify_identity

oci_registry = oci_support.oci_registry


@dataclass
class Stack:
    runtime: Runtime
    http: httpx.AsyncClient
    island: Island
    assignments: list[dict[str, Any]]


@pytest_asyncio.fixture
async def stack(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    advisories = write_advisories(
        tmp_path / "osv",
        osv("DSA-5000-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.11-1"}], "CRITICAL"),
    )
    settings = make_settings(
        database_url,
        nats_url=nats_url,
        heartbeat_flush_seconds=0.1,
        require_host_approval=False,
        registry_scanners=["builtin"],
        registry_advisory_dir=str(advisories),
    )
    runtime = Runtime.from_settings(settings)
    supervisor = Supervisor(build_children(runtime, with_worker=True))
    await supervisor.start()
    island = Island(
        IslandConfig(
            nats_url=nats_url,
            state_dir=tmp_path / "island",
            heartbeat_interval=0.2,
            lease_interval=0.2,
            asking_prices={"_default": "0.5"},
            runtime=RuntimeOptions(token_rate=0, cache_dir=tmp_path / "wasm-cache"),
        )
    )
    observer = await nats.connect(nats_url)
    assignments: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        assignments.append(json.loads(msg.data))

    await observer.subscribe(f"host.{island.host_id}.jobs", cb=keep)
    await island.start()
    try:
        async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as http:
            yield Stack(runtime, http, island, assignments)
    finally:
        await island.stop()
        await observer.close()
        await supervisor.stop()
        await runtime.db.dispose()


def image_with_openssl(registry: Registry, repo: str, version: str) -> str:
    files = {
        "etc/os-release": DEBIAN_12,
        "var/lib/dpkg/status": dpkg_status(("openssl", version), ("bash", "5.2-1")),
    }
    return registry.push_image(repo, files)


async def scanned(stack: Stack, who: Consumer, submission_id: int) -> dict[str, Any]:
    """Wait for the WorkloadScan worker to move the submission out of scanning."""

    async def done() -> dict[str, Any] | None:
        data = await submission(stack.http, who, submission_id)
        return data if data["status"] not in ("submitted", "scanning") else None

    result: dict[str, Any] = await eventually(done, within=30)
    return result


async def run_job(stack: Stack, who: Consumer, slug: str, expected: str) -> dict[str, Any]:
    response = await stack.http.post(
        "/api/v1/jobs", headers=who.headers, json={"workload": slug, "input": {"prompt": "hello there"}}
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["data"]["id"]

    async def finished() -> dict[str, Any] | None:
        job = (await stack.http.get(f"/api/v1/jobs/{job_id}", headers=who.headers)).json()["data"]
        return job if job["status"] in ("completed", "failed", "cancelled", "timeout") else None

    job: dict[str, Any] = await eventually(finished, within=20)
    assert job["status"] == expected, job
    return job


async def cargo(stack: Stack, who: Consumer, slug: str) -> dict[str, Any]:
    data: dict[str, Any] = (await stack.http.get(f"/api/v1/marketplace/{slug}", headers=who.headers)).json()[
        "data"
    ]
    return data


async def test_submit_scan_review_publish_run_and_reputation(stack: Stack, oci_registry: Registry) -> None:
    runtime, http = stack.runtime, stack.http
    admin = await make_consumer(runtime, "admin@example.com", admin=True)
    dev = await make_consumer(runtime, "dev@example.com")
    consumer = await make_consumer(runtime, "consumer@example.com")
    key, pem = new_key()
    await verify_identity(runtime, dev.user.id)
    tier = await http.put(
        "/api/v1/marketplace/publisher",
        headers=dev.headers,
        json={"tier": "verified", "signing_public_key": pem},
    )
    assert tier.status_code == 200

    # 1. An image with a vulnerable openssl: the scan finds it and the Cargo cannot reach L1.
    vulnerable = image_with_openssl(oci_registry, "acme/llm-vulnerable", "3.0.2-1")
    oci_registry.sign("acme/llm-vulnerable", vulnerable, key)
    bad = await create_submission(
        http, dev, "llm-vulnerable", f"{oci_registry.host}/acme/llm-vulnerable", vulnerable
    )
    await submit(http, dev, bad["id"])
    bad_scan = await scanned(stack, dev, bad["id"])
    assert bad_scan["status"] == "in_review" and bad_scan["max_trust_level"] == 0
    assert bad_scan["scan"]["counts"]["critical"] == 1
    assert [(f["id"], f["package"], f["fixed_versions"]) for f in bad_scan["scan"]["findings"]] == [
        ("DSA-5000-1", "openssl", ["3.0.11-1"])
    ]
    blocked = await http.post(
        f"/api/v1/admin/marketplace/submissions/{bad['id']}/approve",
        headers=admin.headers,
        json={"trust_level": 1},
    )
    assert blocked.status_code == 409 and "critical" in blocked.json()["error"]["message"]

    # 2. A clean, signed image passes, is approved at L2 and published.
    clean = image_with_openssl(oci_registry, "acme/llm-echo", "3.0.11-1")
    oci_registry.sign("acme/llm-echo", clean, key)
    good = await create_submission(http, dev, "llm-echo", f"{oci_registry.host}/acme/llm-echo", clean)
    await submit(http, dev, good["id"])
    good_scan = await scanned(stack, dev, good["id"])
    assert good_scan["status"] == "in_review" and good_scan["max_trust_level"] == 3
    assert good_scan["signature_verified"] is True
    approved = await http.post(
        f"/api/v1/admin/marketplace/submissions/{good['id']}/approve",
        headers=admin.headers,
        json={"trust_level": 2},
    )
    assert approved.status_code == 200, approved.text
    listed = {
        w["slug"]: w for w in (await http.get("/api/v1/workloads", headers=consumer.headers)).json()["data"]
    }
    assert listed["llm-echo"]["trust_level"] == 2 and listed["llm-echo"]["sandbox_tier"] == "standard"
    assert "llm-vulnerable" not in listed

    # 3. A consumer runs it through the reference Island; the AssignJob carries the image by digest and
    # the sandbox tier (which sets the Island's time limit); reputation rises.
    job = await run_job(stack, consumer, "llm-echo", "completed")
    assert job["output"] == "You said: hello there"
    assign = next(a for a in stack.assignments if a["job_id"] == job["id"])
    assert assign["container_image"] == f"{oci_registry.host}/acme/llm-echo@{clean}"
    assert assign["image_digest"] == clean and assign["sandbox_tier"] == "standard"

    async def risen() -> float | None:
        score = (await cargo(stack, consumer, "llm-echo"))["reputation"]
        return score if score > 1.0 else None

    assert await eventually(risen) == 1.015  # success +0.01, and fast (+0.005)

    # 4. Version 1.1.0 ships an image the Island cannot run: every job fails. The hourly worker demotes
    # the Cargo (success rate below 80 % → L0), and once the score falls below 0.5 suspends it.
    broken = image_with_openssl(oci_registry, "acme/broken", "3.0.11-1")
    oci_registry.sign("acme/broken", broken, key)
    v2 = await create_submission(
        http, dev, "llm-echo", f"{oci_registry.host}/acme/broken", broken, version="1.1.0"
    )
    await submit(http, dev, v2["id"])
    assert (await scanned(stack, dev, v2["id"]))["status"] == "in_review"
    approved = await http.post(
        f"/api/v1/admin/marketplace/submissions/{v2['id']}/approve", headers=admin.headers
    )
    assert approved.status_code == 200, approved.text
    await run_job(stack, consumer, "llm-echo", "failed")
    await eventually(lambda: _score_below(stack, consumer, 1.0))
    actions = await reputation.run_hourly(runtime)
    assert actions["demoted"] == 1 and actions["suspended"] == 0
    assert (await cargo(stack, consumer, "llm-echo"))["trust_level"] == 0
    for _ in range(5):
        failed = await run_job(stack, consumer, "llm-echo", "failed")
    last = next(a for a in stack.assignments if a["job_id"] == failed["id"])
    assert last["sandbox_tier"] == "restricted"  # L0 after the demotion
    await eventually(lambda: _score_below(stack, consumer, 0.5))
    actions = await reputation.run_hourly(runtime)
    assert actions["suspended"] == 1
    refused = await http.post(
        "/api/v1/jobs", headers=consumer.headers, json={"workload": "llm-echo", "input": {"prompt": "again"}}
    )
    assert refused.status_code == 422
    assert refused.json()["errors"] == {"workload": ["is suspended"]}
    detail = await cargo(stack, consumer, "llm-echo")
    assert detail["suspended"] is True and "below 0.5" in detail["suspension_reason"]
    listed = {
        w["slug"] for w in (await http.get("/api/v1/workloads", headers=consumer.headers)).json()["data"]
    }
    assert "llm-echo" not in listed
    async with runtime.db.session() as session:
        from sqlalchemy import text

        mails = (await session.execute(text("SELECT recipient FROM email_outbox"))).scalars().all()
    assert "dev@example.com" in mails


async def _score_below(stack: Stack, who: Consumer, limit: float) -> bool:
    return bool((await cargo(stack, who, "llm-echo"))["reputation"] < limit)
