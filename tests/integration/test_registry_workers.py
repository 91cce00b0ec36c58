"""The WorkloadScan worker (a real procrastinate worker on queue security_scans) with bad input: a digest
that does not exist, an image too big, a malformed manifest, a scanner that hangs. Each scan ends with
a recorded reason, nothing is published, and the same worker goes on to scan the next image."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from coordinator.app import WorkerChild
from coordinator.marketplace import registry, scanning
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.workers.app import defer_scan
from tests import oci_support
from tests.factories import make_consumer
from tests.islands_support import eventually
from tests.oci_support import OCI_INDEX, Registry

oci_registry = oci_support.oci_registry
GOOD_REPORT = {"SchemaVersion": 2, "Results": [{"Target": "x", "Type": "debian", "Vulnerabilities": []}]}


@pytest.fixture
def fake_trivy(tmp_path: Path) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{old}"
    try:
        yield bin_dir / "trivy"
    finally:
        os.environ["PATH"] = old


def write_tool(path: Path, script: str) -> None:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


async def submitted(runtime: Runtime, user_id: int, slug: str, image: str, digest: str) -> int:
    async with runtime.db.transaction() as session:
        user = await session.get(registry.User, user_id)
        assert user is not None
        created = await registry.create_submission(
            session, user, slug, slug, "1.0.0", {"image": image, "image_digest": digest}
        )
        await registry.submit(session, user, created.id)
        return created.id


async def outcome(runtime: Runtime, submission_id: int) -> Any:
    async def done() -> Any:
        async with runtime.db.session() as session:
            row = (
                await session.execute(
                    text("SELECT status, status_reason FROM workload_submissions WHERE id = :id"),
                    {"id": submission_id},
                )
            ).one()
        return row if row.status not in ("submitted", "scanning") else None

    return await eventually(done, within=30)


async def test_bad_images_end_their_scans_with_a_reason_and_the_worker_stays_up(
    runtime: Runtime, oci_registry: Registry, fake_trivy: Path, tmp_path: Path
) -> None:
    runtime.settings.registry_scanners = ["trivy"]
    runtime.settings.registry_max_image_bytes = 32 * 1024
    runtime.settings.registry_scan_timeout_seconds = 2
    write_tool(fake_trivy, "exec sleep 600\n")  # a scanner that hangs
    dev = await make_consumer(runtime, "dev@example.com")
    async with runtime.db.transaction() as session:  # more Cargos than an Individual may hold
        await registry.update_publisher(session, dev.user.id, tier="organization", by_admin=True)
    host = oci_registry.host
    small = oci_registry.push_image("acme/small", {"a": b"a"})
    big = oci_registry.push_image("acme/huge", {"blob": os.urandom(64 * 1024)})
    malformed = oci_registry.push_manifest(
        "acme/malformed", "v1", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX}).encode(), OCI_INDEX
    )
    cases = {
        "missing": (f"{host}/acme/small", "sha256:" + "0" * 64, "does not exist"),
        "too-big": (f"{host}/acme/huge", big, "image too big"),
        "malformed": (f"{host}/acme/malformed", malformed, "malformed manifest"),
        "hangs": (f"{host}/acme/small", small, "trivy did not finish within"),
    }
    supervisor = Supervisor([WorkerChild(runtime)])
    await supervisor.start()
    try:
        ids = {}
        for slug, (image, digest, _) in cases.items():
            ids[slug] = await submitted(runtime, dev.user.id, slug, image, digest)
            assert await defer_scan(runtime, submission_id=ids[slug])
        for slug, (_, _, reason) in cases.items():
            row = await outcome(runtime, ids[slug])
            assert row.status == "changes_requested", slug
            assert reason in row.status_reason, (slug, row.status_reason)
        # The same worker scans the next image once the scanner answers again.
        write_tool(fake_trivy, f"echo '{json.dumps(GOOD_REPORT)}'\n")
        after = await submitted(runtime, dev.user.id, "after", f"{host}/acme/small", small)
        assert await defer_scan(runtime, submission_id=after)
        assert (await outcome(runtime, after)).status == "in_review"
    finally:
        await supervisor.stop()
    async with runtime.db.session() as session:
        published = (
            await session.execute(text("SELECT count(*) FROM workloads WHERE publisher_id IS NOT NULL"))
        ).scalar()
        scans = dict(
            (
                await session.execute(
                    text("SELECT submission_id, reason FROM security_scans WHERE status = 'error'")
                )
            ).all()
        )
    assert published == 0
    assert set(scans) == set(ids.values())  # every failure is stored with its reason


async def test_a_second_queued_scan_of_the_same_submission_is_not_queued(runtime: Runtime) -> None:
    assert await defer_scan(runtime, submission_id=12345)
    assert not await defer_scan(runtime, submission_id=12345)


async def test_the_backstop_requeues_lost_scans(runtime: Runtime, oci_registry: Registry) -> None:
    dev = await make_consumer(runtime, "dev@example.com")
    digest = oci_registry.push_image("acme/lost", {"a": b"a"})
    lost = await submitted(runtime, dev.user.id, "lost", f"{oci_registry.host}/acme/lost", digest)
    stale = await submitted(runtime, dev.user.id, "stale", f"{oci_registry.host}/acme/lost", digest)
    async with runtime.db.transaction() as session:
        await registry.transition(session, stale, "start_scan", actor_id=None)
        await session.execute(text("UPDATE workload_submissions SET updated_at = now() - interval '2 hours'"))
    async with runtime.db.transaction() as session:
        waiting = await scanning.requeue_stuck_scans(session, submitted_for=60, scanning_for=600)
    assert sorted(waiting) == sorted([lost])  # the stale one is back in `submitted`, queued next sweep
    async with runtime.db.session() as session:
        status = (
            await session.execute(text("SELECT status FROM workload_submissions WHERE id=:i"), {"i": stale})
        ).scalar()
    assert status == "submitted"
