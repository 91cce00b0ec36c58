"""Scanning Cargo images: fetch by digest, run every configured scanner with a time limit, verify the
cosign signature, store the findings, and move the submission (or demote a published Cargo)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.config import Settings
from coordinator.errors import Conflict
from coordinator.marketplace import publishers, registry, trust
from coordinator.marketplace import submission_rules as rules
from coordinator.marketplace.oci import FetchError, fetch_image
from coordinator.marketplace.osv import OsvScanner
from coordinator.marketplace.scanners import (
    COMPLETED,
    ERROR,
    GrypeScanner,
    Scanner,
    ScanOutcome,
    TrivyScanner,
)
from coordinator.marketplace.signing import SignatureVerdict, verify_image_signature
from coordinator.runtime import Runtime
from coordinator.workloads.models import SecurityScan, Workload

log = structlog.get_logger(__name__)


def scanners_from_settings(settings: Settings) -> list[Scanner]:
    advisory = Path(settings.registry_advisory_dir) if settings.registry_advisory_dir else None
    known: dict[str, Scanner] = {
        "trivy": TrivyScanner("trivy"),
        "grype": GrypeScanner("grype"),
        "builtin": OsvScanner(advisory),
    }
    return [known[name] for name in settings.registry_scanners if name in known]


@dataclass
class ImageScan:
    """The result of scanning one image: a fetch failure, or each scanner's outcome."""

    digest: str | None
    fetch_error: str | None = None
    outcomes: list[ScanOutcome] = field(default_factory=list)
    signature: SignatureVerdict | None = None

    @property
    def completed(self) -> list[ScanOutcome]:
        return [o for o in self.outcomes if o.status == COMPLETED]


async def scan_image(
    runtime: Runtime, name: str, digest: str, signing_key: str | None, scanners: list[Scanner] | None = None
) -> ImageScan:
    """Fetch `name@digest` and scan it, within the per-image time limit and the process's scan slots."""
    settings = runtime.settings
    limit = settings.registry_scan_timeout_seconds
    result = ImageScan(digest)
    async with runtime.scan_slots:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cargo-scan-", dir=settings.registry_work_dir) as work:
            try:
                async with asyncio.timeout(limit):
                    image = await fetch_image(
                        name,
                        digest,
                        Path(work) / "image",
                        max_bytes=settings.registry_max_image_bytes,
                        insecure_hosts=settings.registry_insecure_hosts,
                    )
            except FetchError as exc:
                result.fetch_error = exc.reason
                return result
            except TimeoutError:
                result.fetch_error = f"fetching the image did not finish within {limit:g} s"
                return result
            remaining = max(1.0, limit - (time.monotonic() - started))
            chosen = scanners if scanners is not None else scanners_from_settings(settings)
            result.outcomes = list(await asyncio.gather(*(_scan_one(s, image, remaining) for s in chosen)))
        if signing_key:
            try:
                async with asyncio.timeout(60):
                    result.signature = await verify_image_signature(
                        name, digest, signing_key, insecure_hosts=settings.registry_insecure_hosts
                    )
            except TimeoutError:
                result.signature = SignatureVerdict(False, "fetching the signature timed out")
        else:
            result.signature = SignatureVerdict(False, "the publisher has registered no signing key")
    return result


async def _scan_one(scanner: Scanner, image: Any, time_limit: float) -> ScanOutcome:
    """One scanner, never raising: a crash or an overrun is that scanner's error, not the scan's."""
    try:
        async with asyncio.timeout(time_limit + 5):
            return await scanner.scan(image, time_limit)
    except TimeoutError:
        return ScanOutcome(
            scanner.name, ERROR, reason=f"{scanner.name} did not finish within {time_limit:.3g} s"
        )
    except Exception as exc:
        log.exception("registry.scanner_crashed", scanner=scanner.name)
        return ScanOutcome(scanner.name, ERROR, reason=f"{scanner.name} crashed: {exc}")


def _scan_rows(scan: ImageScan, image: str, **owner: Any) -> list[SecurityScan]:
    now = datetime.now(UTC)
    if scan.fetch_error is not None:
        return [
            SecurityScan(
                image=image[:500],
                scanner="fetch",
                status=ERROR,
                digest=scan.digest,
                reason=scan.fetch_error,
                finished_at=now,
                **owner,
            )
        ]
    rows = []
    for outcome in scan.outcomes:
        counts = trust.severity_counts(outcome.findings)
        rows.append(
            SecurityScan(
                image=image[:500],
                scanner=outcome.scanner,
                status=outcome.status,
                digest=scan.digest,
                reason=outcome.reason,
                critical=counts["critical"],
                high=counts["high"],
                medium=counts["medium"],
                low=counts["low"],
                report={"findings": [f.as_dict() for f in outcome.findings], **outcome.details},
                finished_at=now,
                **owner,
            )
        )
    return rows


async def scan_submission(runtime: Runtime, submission_id: int) -> dict[str, Any]:
    """(Results name no ids: the worker's log lines carry the job's own as correlation ids.)

    The WorkloadScan job for a submission: submitted → scanning → in_review (at least one scanner
    completed) or → changes_requested with the reason (fetch failed, no scanner completed)."""
    async with runtime.db.transaction() as session:
        try:
            submission = await registry.transition(session, submission_id, "start_scan", actor_id=None)
        except Conflict:
            return {"skipped": "not waiting for a scan"}
        spec = dict(submission.spec)
        publisher = await publishers.publisher_of(session, submission.publisher_id)
        key = publisher.signing_public_key
    image = rules.image_of(spec)
    if image is None:  # a WASM module is pinned by its hash; there is no image to scan
        scan = ImageScan(None, outcomes=[])
        reason = "no container image to scan (the module is pinned by its hash)"
        return await _finish_submission(runtime, submission_id, scan, "", reason_if_unscanned=reason)
    scan = await scan_image(runtime, image[0], image[1], key)
    return await _finish_submission(runtime, submission_id, scan, f"{image[0]}@{image[1]}")


async def _finish_submission(
    runtime: Runtime, submission_id: int, scan: ImageScan, image: str, reason_if_unscanned: str | None = None
) -> dict[str, Any]:
    async with runtime.db.transaction() as session:
        for row in _scan_rows(scan, image, submission_id=submission_id):
            session.add(row)
        await session.flush()
        signed = bool(scan.signature and scan.signature.verified)
        common = {
            "scanned_at": datetime.now(UTC),
            "signature_verified": signed,
            "signature_reason": scan.signature.reason if scan.signature else None,
        }
        if reason_if_unscanned is not None:
            await registry.transition(
                session,
                submission_id,
                "scan_finished",
                actor_id=None,
                reason=reason_if_unscanned,
                values={**common, "max_trust_level": 0},
            )
            return {"status": rules.IN_REVIEW, "scanned": False}
        if scan.fetch_error is not None or not scan.completed:
            reason = scan.fetch_error or "no scanner completed: " + "; ".join(
                f"{o.scanner}: {o.reason}" for o in scan.outcomes
            )
            await registry.transition(
                session, submission_id, "scan_failed", actor_id=None, reason=reason, values=common
            )
            log.info("registry.scan_failed", submission_id=submission_id, reason=reason)
            return {"status": rules.CHANGES_REQUESTED, "reason": reason}
        per_scanner = {o.scanner: o.findings for o in scan.completed}
        counts = trust.severity_counts(trust.merge_findings(per_scanner))
        allowed, why = trust.max_trust_by_findings(counts)
        await registry.transition(
            session,
            submission_id,
            "scan_finished",
            actor_id=None,
            reason=why,
            values={**common, "max_trust_level": allowed},
        )
        return {
            "status": rules.IN_REVIEW,
            "max_trust_level": allowed,
            **counts,
        }


async def rescan_workload(runtime: Runtime, workload_id: int) -> dict[str, Any]:
    """Rescan a published Cargo's image; new findings above what its trust level allows demote it."""
    async with runtime.db.session() as session:
        workload = await session.get(Workload, workload_id)
        if workload is None or not workload.container_image or not workload.image_digest:
            return {"skipped": "no image"}
        name = rules.split_image(workload.container_image)[0]
        digest = workload.image_digest
        key = None
        if workload.publisher_id is not None:
            key = (await publishers.publisher_of(session, workload.publisher_id)).signing_public_key
    scan = await scan_image(runtime, name, digest, key)
    async with runtime.db.transaction() as session:
        for row in _scan_rows(scan, f"{name}@{digest}", workload_id=workload_id):
            session.add(row)
        workload = await session.get(Workload, workload_id, with_for_update=True)
        assert workload is not None
        if scan.fetch_error is not None or not scan.completed:
            # Not a pass: the Cargo stays due and is tried again by the next rescan.
            return {
                "scanned": False,
                "reason": scan.fetch_error or "no scanner completed",
            }
        counts = trust.severity_counts(trust.merge_findings({o.scanner: o.findings for o in scan.completed}))
        allowed, why = trust.max_trust_by_findings(counts)
        if workload.publisher_id is not None and not (scan.signature and scan.signature.verified):
            allowed = min(allowed, 1)
        demoted = workload.trust_level > allowed
        if demoted:
            log.info("registry.demoted", workload_id=workload_id, reason=why, to=allowed)
            workload.trust_level = allowed
        workload.last_scanned_at = datetime.now(UTC)
        return {"scanned": True, "demoted": demoted, **counts}


async def due_for_rescan(session: AsyncSession, days: int) -> list[int]:
    """Published Cargos with an image not scanned in `days` days."""
    query = text(
        "SELECT id FROM workloads WHERE container_image IS NOT NULL AND image_digest IS NOT NULL "
        "AND publisher_id IS NOT NULL AND suspended_at IS NULL "
        "AND (last_scanned_at IS NULL OR last_scanned_at < now() - make_interval(days => :days)) ORDER BY id"
    )
    return [int(r[0]) for r in (await session.execute(query, {"days": days})).all()]


async def requeue_stuck_scans(
    session: AsyncSession, *, submitted_for: float, scanning_for: float
) -> list[int]:
    """Submissions whose scan job was lost: waiting in `submitted` (the deferral failed) or left in
    `scanning` by a worker that died. The stale scans go back to `submitted`; returns all their ids."""
    model = registry.WorkloadSubmission
    stale = await session.execute(
        select(model.id).where(
            model.status == rules.SCANNING,
            model.updated_at < text("now() - make_interval(secs => :age)").bindparams(age=scanning_for),
        )
    )
    for submission_id in stale.scalars():
        await registry.transition(
            session,
            submission_id,
            "retry_scan",
            actor_id=None,
            reason="the scan did not finish; queued again",
        )
    waiting = await session.execute(
        select(model.id).where(
            model.status == rules.SUBMITTED,
            model.updated_at < text("now() - make_interval(secs => :age)").bindparams(age=submitted_for),
        )
    )
    return [int(i) for i in waiting.scalars()]
