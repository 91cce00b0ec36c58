"""Published Cargos over time: the weekly rescan demotes on new findings, the hourly Reputation worker
promotes a qualifying L0 Cargo to L1 and flags one with complaints (real PostgreSQL and OCI registry)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
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


async def finished_jobs(runtime: Runtime, user_id: int, workload_id: int, states: list[str]) -> list[str]:
    """Finished jobs as the lifecycle leaves them (each ran 1 s), oldest first; `dead` is a dead-letter."""
    ids = []
    insert = text(
        "INSERT INTO jobs (id, user_id, workload_id, state, input, error, started_at, completed_at) "
        "VALUES (gen_random_uuid(), :u, :w, :s, '{}', :e, now() - make_interval(secs => 1000 - :i), "
        "now() - make_interval(secs => 999 - :i)) RETURNING id::text"
    )
    async with runtime.db.transaction() as session:
        for i, state in enumerate(states):
            error = "dead-lettered: no Island answered" if state == "dead" else None
            state = "failed" if state == "dead" else state
            row = await session.execute(
                insert, {"u": user_id, "w": workload_id, "s": state, "e": error, "i": i}
            )
            ids.append(row.scalar_one())
    return ids


async def cargo_state(runtime: Runtime, workload_id: int) -> tuple[dict[str | None, list[str]], float, int]:
    """The Cargo's reputation events by job, its score and its success streak."""
    async with runtime.db.session() as session:
        events = (
            await session.execute(
                text("SELECT event_type, job_id::text FROM cargo_reputation_events WHERE workload_id = :w"),
                {"w": workload_id},
            )
        ).all()
        row = (
            await session.execute(
                text("SELECT reputation, success_streak FROM workloads WHERE id = :w"), {"w": workload_id}
            )
        ).one()
    by_job: dict[str | None, list[str]] = {}
    for kind, job_id in events:
        by_job.setdefault(job_id, []).append(kind)
    return by_job, float(row.reputation), int(row.success_streak)


async def chat_cargo(runtime: Runtime, email: str, streak: int) -> tuple[int, int]:
    from tests.factories import seed_cargos

    await seed_cargos(runtime)
    consumer = await make_consumer(runtime, email)
    async with runtime.db.transaction() as session:
        workload_id = int(await session.scalar(text("SELECT id FROM workloads WHERE slug = 'llm-chat'")))
        await session.execute(
            text("UPDATE workloads SET reputation = 1.0, success_streak = :s WHERE id = :w"),
            {"w": workload_id, "s": streak},
        )
        await session.execute(
            text("DELETE FROM cargo_reputation_events WHERE workload_id = :w"), {"w": workload_id}
        )
    return consumer.user.id, workload_id


async def test_a_batch_of_finished_jobs_moves_their_cargo_as_each_job_would_in_turn(runtime: Runtime) -> None:
    user_id, workload_id = await chat_cargo(runtime, "rep-batch@example.com", streak=98)
    states = ["succeeded", "succeeded", "failed", "cancelled", "timeout", "dead", "succeeded"]
    ids = await finished_jobs(runtime, user_id, workload_id, states)
    assert await reputation.record_finished_jobs(runtime) == len(ids)
    by_job, score, streak = await cargo_state(runtime, workload_id)
    # Success and fast (1 s of a 60 s limit) each; the streak bonus at the 100th success in a row; a
    # failure and a timeout reset the streak; a dead-lettered job counts nothing.
    assert sorted(by_job[ids[0]]) == ["fast", "success"] and sorted(by_job[ids[6]]) == ["fast", "success"]
    assert by_job[ids[2]] == ["failure"] and by_job[ids[3]] == ["cancel"] and by_job[ids[4]] == ["timeout"]
    assert ids[5] not in by_job and by_job[None] == ["streak"]
    assert score == pytest.approx(1.0 + 3 * (0.01 + 0.005) + 0.10 - 0.10 - 0.02 - 0.05)
    assert streak == 1
    assert await reputation.record_finished_jobs(runtime) == 0  # nothing is counted twice


async def test_recorders_on_several_replicas_count_each_finished_job_once(runtime: Runtime) -> None:
    import asyncio

    user_id, workload_id = await chat_cargo(runtime, "rep-replicas@example.com", streak=0)
    ids = await finished_jobs(runtime, user_id, workload_id, ["succeeded"] * 20)

    async def replica() -> int:
        total = 0
        while counted := await reputation.record_finished_jobs(runtime, limit=5):
            total += counted
        return total

    assert sum(await asyncio.gather(*(replica() for _ in range(3)))) == 20
    by_job, score, streak = await cargo_state(runtime, workload_id)
    assert all(sorted(by_job[i]) == ["fast", "success"] for i in ids)
    assert score == pytest.approx(1.0 + 20 * 0.015) and streak == 20
