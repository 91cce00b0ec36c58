"""Published Cargos over time: the weekly rescan demotes on new findings, the hourly Reputation worker
promotes a qualifying L0 Cargo to L1 and flags one with complaints (real PostgreSQL and OCI registry)."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import text

from coordinator.marketplace import reputation, scanning
from coordinator.runtime import Runtime
from tests import oci_support
from tests.factories import make_consumer
from tests.oci_support import DEBIAN_12, Registry, dpkg_status, new_key, osv, write_advisories
from tests.registry_support import create_submission, submit, verify_identity

oci_registry = oci_support.oci_registry


async def publish(
    runtime: Runtime, http: httpx.AsyncClient, registry: Registry, slug: str, level: int, sign: bool
) -> int:
    admin = await make_consumer(runtime, f"admin-{slug}@example.com", admin=True)
    dev = await make_consumer(runtime, f"dev-{slug}@example.com")
    key, pem = new_key()
    await verify_identity(runtime, dev.user.id)
    await http.put(
        "/api/v1/marketplace/publisher",
        headers=dev.headers,
        json={"tier": "verified", "signing_public_key": pem},
    )
    files = {"etc/os-release": DEBIAN_12, "var/lib/dpkg/status": dpkg_status(("libfoo", "1.0-1"))}
    digest = registry.push_image(f"acme/{slug}", {**files, "slug": slug.encode()})
    if sign:
        registry.sign(f"acme/{slug}", digest, key)
    created = await create_submission(http, dev, slug, f"{registry.host}/acme/{slug}", digest)
    await submit(http, dev, created["id"])
    await scanning.scan_submission(runtime, created["id"])
    approved = await http.post(
        f"/api/v1/admin/marketplace/submissions/{created['id']}/approve",
        headers=admin.headers,
        json={"trust_level": level},
    )
    assert approved.status_code == 200, approved.text
    workload_id: int = approved.json()["data"]["workload_id"]
    return workload_id


async def test_a_rescan_with_new_findings_demotes_and_a_clean_one_stays(
    runtime: Runtime, http: httpx.AsyncClient, oci_registry: Registry, tmp_path: Path
) -> None:
    advisories = tmp_path / "osv"
    advisories.mkdir()
    runtime.settings.registry_scanners = ["builtin"]
    runtime.settings.registry_advisory_dir = str(advisories)
    workload_id = await publish(runtime, http, oci_registry, "rescanned", 2, sign=True)
    async with runtime.db.transaction() as session:
        await session.execute(text("UPDATE workloads SET last_scanned_at = now() - interval '8 days'"))
        assert await scanning.due_for_rescan(session, 7) == [workload_id]
    clean = await scanning.rescan_workload(runtime, workload_id)
    assert clean["scanned"] and not clean["demoted"]
    # A new advisory for a package in the image: the weekly rescan finds it and demotes the Cargo.
    write_advisories(
        advisories, osv("DSA-7-1", "Debian:12", "libfoo", [{"introduced": "0"}, {"fixed": "1.1"}], "HIGH")
    )
    found = await scanning.rescan_workload(runtime, workload_id)
    assert found["demoted"] and found["high"] == 1
    async with runtime.db.session() as session:
        level, scanned = (
            await session.execute(
                text("SELECT trust_level, last_scanned_at FROM workloads WHERE id=:i"), {"i": workload_id}
            )
        ).one()
        assert level == 1 and scanned is not None
        assert await scanning.due_for_rescan(session, 7) == []


async def test_the_hourly_worker_promotes_to_l1_and_flags_complaints(
    runtime: Runtime, http: httpx.AsyncClient, oci_registry: Registry, tmp_path: Path
) -> None:
    runtime.settings.registry_scanners = ["builtin"]
    runtime.settings.registry_advisory_dir = str(write_advisories(tmp_path / "osv"))
    workload_id = await publish(runtime, http, oci_registry, "popular", 0, sign=False)
    async with runtime.db.transaction() as session:
        for _ in range(100):
            await reputation.record_event(session, workload_id, "success")
    assert (await reputation.run_hourly(runtime))["promoted"] == 1
    async with runtime.db.transaction() as session:
        row = (await session.execute(text("SELECT * FROM workloads WHERE id=:i"), {"i": workload_id})).one()
        assert row.trust_level == 1
        assert float(row.reputation) == 1.0 + 100 * 0.01 + 0.10  # the streak bonus at 100
        for _ in range(3):
            await reputation.record_event(session, workload_id, "complaint")
    actions = await reputation.run_hourly(runtime)
    assert actions["flagged"] == 1
    async with runtime.db.session() as session:
        flagged = (
            await session.execute(text("SELECT flagged_at FROM workloads WHERE id=:i"), {"i": workload_id})
        ).scalar()
    assert flagged is not None
