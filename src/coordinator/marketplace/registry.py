"""The Cargo registry's public API: publishers, submissions and their guarded moves, review, publishing
into the catalogue, trust levels, suspension, consumer reviews and the verified publishers' keys."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from coordinator.accounts.models import User
from coordinator.errors import Conflict, Forbidden, NotFound, ValidationFailed
from coordinator.marketplace import signing, trust
from coordinator.marketplace import submission_rules as rules
from coordinator.marketplace.tables import CargoReview, CargoVersion, Publisher, SubmissionEvent
from coordinator.verification.service import is_verified
from coordinator.workloads.models import SecurityScan, Workload, WorkloadSubmission
from coordinator.workloads.rules import MAX_DURATION_BY_TRUST

KIND_BY_CATEGORY = {"chat": "chat", "image": "image", "classification": "classification"}
VERIFIED_TIERS = ("verified", "organization", "partner")


# --- publishers --------------------------------------------------------------------------------------


async def publisher_of(session: AsyncSession, user_id: int, *, lock: bool = False) -> Publisher:
    """The user's publisher record (an Individual one is created on first use)."""
    await session.execute(insert(Publisher).values(user_id=user_id).on_conflict_do_nothing())
    query = select(Publisher).where(Publisher.user_id == user_id)
    if lock:
        query = query.with_for_update()
    publisher = (await session.execute(query)).scalar_one()
    return publisher


async def publisher_is_verified(session: AsyncSession, publisher: Publisher) -> bool:
    """Verified or above, with the identity check (KYC) passed."""
    return publisher.tier in VERIFIED_TIERS and await is_verified(session, publisher.user_id)


async def update_publisher(
    session: AsyncSession,
    user_id: int,
    *,
    tier: str | None = None,
    signing_public_key: str | None = None,
    cargo_limit: int | None = None,
    by_admin: bool = False,
) -> Publisher:
    """Register a cosign key, or change tier: a publisher may become Verified once KYC passed;
    Organization and Partner (and custom limits) are granted by an admin (of an existing user: 404)."""
    if by_admin and await session.get(User, user_id) is None:
        raise NotFound("User not found")
    publisher = await publisher_of(session, user_id, lock=True)
    if tier is not None:
        if tier not in rules.TIERS:
            raise ValidationFailed("Invalid input", {"tier": [f"must be one of {', '.join(rules.TIERS)}"]})
        if not by_admin and tier not in ("individual", "verified"):
            raise Forbidden(f"The {tier} tier is granted by an operator")
        if tier == "verified" and not await is_verified(session, user_id):
            raise Forbidden("Publishing as a Verified publisher needs a completed identity verification")
        publisher.tier = tier
    if signing_public_key is not None:
        try:
            signing.load_public_key(signing_public_key)
        except ValueError as exc:
            raise ValidationFailed("Invalid input", {"signing_public_key": [str(exc)]}) from None
        publisher.signing_public_key = signing_public_key
    if cargo_limit is not None and by_admin:
        publisher.cargo_limit = cargo_limit
    await session.flush()
    return publisher


def publisher_view(publisher: Publisher) -> dict[str, Any]:
    return {
        "user_id": publisher.user_id,
        "tier": publisher.tier,
        "cargo_limit": rules.cargo_limit(publisher.tier, publisher.cargo_limit),
        "signing_public_key": publisher.signing_public_key,
    }


# --- submissions -------------------------------------------------------------------------------------

SPEC_FIELDS = (
    "description",
    "category",
    "runtime",
    "image",
    "image_digest",
    "wasm_url",
    "wasm_hash",
    "input_schema",
    "required_ram_mb",
    "required_vram_mb",
    "required_cpu_cores",
    "runtimes",
    "price_per_job",
    "changelog",
    "max_duration_seconds",
)


def _check_identity(slug: Any, name: Any, version: Any) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not isinstance(slug, str) or not rules.SLUG.match(slug):
        errors["slug"] = ["must be 1–100 lowercase letters, digits or dashes"]
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 200:
        errors["name"] = ["must be 1–200 characters"]
    if not isinstance(version, str) or not rules.VERSION.match(version):
        errors["version"] = ["must be a version such as 1.2.0"]
    return errors


async def _slug_owner(session: AsyncSession, slug: str) -> Workload | None:
    query = select(Workload).where(Workload.slug == slug)
    return (await session.execute(query)).scalar_one_or_none()


async def create_submission(
    session: AsyncSession, user: User, slug: Any, name: Any, version: Any, spec: dict[str, Any]
) -> WorkloadSubmission:
    """A draft for a new Cargo or a new version of one the user publishes, within the tier's limit."""
    errors = _check_identity(slug, name, version)
    errors.update(rules.validate_spec(spec, complete=False))
    if errors:
        raise ValidationFailed("Invalid input", errors)
    publisher = await publisher_of(session, user.id, lock=True)  # serialises this publisher's creates
    existing = await _slug_owner(session, slug)
    if existing is not None and existing.publisher_id != user.id:
        raise Conflict(f"The slug {slug!r} belongs to another Cargo", code="slug_taken")
    if existing is not None:
        taken = await session.execute(
            select(CargoVersion.id).where(
                CargoVersion.workload_id == existing.id, CargoVersion.version == version
            )
        )
        if taken.first() is not None:
            raise Conflict(f"Version {version} of {slug} is already published", code="version_exists")
    limit = rules.cargo_limit(publisher.tier, publisher.cargo_limit)
    if limit is not None and existing is None:
        held = await session.execute(
            select(func.count(func.distinct(WorkloadSubmission.slug))).where(
                WorkloadSubmission.publisher_id == user.id,
                WorkloadSubmission.status != rules.REJECTED,
                WorkloadSubmission.slug != slug,
            )
        )
        if (held.scalar() or 0) >= limit:
            raise Conflict(
                f"The {publisher.tier} tier allows {limit} Cargos; this publisher holds {limit}",
                code="cargo_limit_reached",
            )
    submission = WorkloadSubmission(
        publisher_id=user.id,
        workload_id=existing.id if existing is not None else None,
        slug=slug,
        name=name.strip(),
        version=version,
        spec={k: spec[k] for k in SPEC_FIELDS if k in spec},
        status=rules.DRAFT,
    )
    session.add(submission)
    await session.flush()
    session.add(
        SubmissionEvent(
            submission_id=submission.id,
            move="create",
            from_status="new",
            to_status=rules.DRAFT,
            actor_id=user.id,
        )
    )
    return submission


async def get_submission(session: AsyncSession, user: User, submission_id: int) -> WorkloadSubmission:
    """A submission its publisher (or an admin) may see."""
    submission = await session.get(WorkloadSubmission, submission_id)
    if submission is None or (submission.publisher_id != user.id and not user.is_admin):
        raise NotFound("Submission not found")
    return submission


async def update_submission(
    session: AsyncSession, user: User, submission_id: int, changes: dict[str, Any]
) -> WorkloadSubmission:
    """Edit a draft (or one sent back for changes): one guarded UPDATE, so an edit racing a submit
    either lands before it or is refused."""
    submission = await get_submission(session, user, submission_id)
    if submission.publisher_id != user.id:
        raise Forbidden("Only the publisher edits a submission")
    spec = {**submission.spec, **{k: v for k, v in changes.items() if k in SPEC_FIELDS}}
    name = changes.get("name", submission.name)
    version = changes.get("version", submission.version)
    errors = _check_identity(submission.slug, name, version)
    errors.update(rules.validate_spec(spec, complete=False))
    if errors:
        raise ValidationFailed("Invalid input", errors)
    result = await session.execute(
        text(
            "UPDATE workload_submissions SET spec = CAST(:spec AS jsonb), name = :name, version = :version, "
            "updated_at = now() WHERE id = :id AND status = ANY(:editable) RETURNING id"
        ),
        {
            "spec": _json(spec),
            "name": str(name).strip(),
            "version": version,
            "id": submission_id,
            "editable": list(rules.EDITABLE),
        },
    )
    if result.first() is None:
        raise Conflict(f"A submission in {submission.status!r} cannot be edited", code="not_editable")
    await session.refresh(submission)
    return submission


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


async def transition(
    session: AsyncSession,
    submission_id: int,
    move_name: str,
    *,
    actor_id: int | None,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> WorkloadSubmission:
    """Apply one move of the table in `submission_rules.MOVES` with one guarded UPDATE and record it.
    Conflict when the submission is not in a state the move leaves from (a racing move won)."""
    move = rules.MOVES[move_name]
    sets = {"status": move.to_state, "status_reason": reason, **(values or {})}
    assignments = ", ".join(f"{column} = :v_{column}" for column in sets)
    params = {f"v_{column}": value for column, value in sets.items()}
    result = await session.execute(
        text(
            f"UPDATE workload_submissions s SET {assignments}, updated_at = now() "
            "FROM (SELECT id, status AS previous FROM workload_submissions WHERE id = :id FOR UPDATE) old "
            "WHERE s.id = old.id AND old.previous = ANY(:from_states) RETURNING old.previous"
        ),
        {**params, "id": submission_id, "from_states": list(move.from_states)},
    )
    row = result.first()
    if row is None:
        current = await session.scalar(
            select(WorkloadSubmission.status).where(WorkloadSubmission.id == submission_id)
        )
        if current is None:
            raise NotFound("Submission not found")
        raise Conflict(
            f"Cannot {move_name.replace('_', ' ')} a submission that is {current}", code="invalid_state"
        )
    session.add(
        SubmissionEvent(
            submission_id=submission_id,
            move=move_name,
            from_status=str(row.previous),
            to_status=move.to_state,
            actor_id=actor_id,
            reason=reason,
        )
    )
    await session.flush()
    submission = await session.get(WorkloadSubmission, submission_id, populate_existing=True)
    assert submission is not None
    return submission


async def submit(session: AsyncSession, user: User, submission_id: int) -> WorkloadSubmission:
    """Send a complete draft to scanning (the caller queues the scan once this commits)."""
    submission = await get_submission(session, user, submission_id)
    if submission.publisher_id != user.id:
        raise Forbidden("Only the publisher submits")
    errors = rules.validate_spec(submission.spec, complete=True)
    if errors:
        raise ValidationFailed("The submission is incomplete", errors)
    return await transition(session, submission_id, "submit", actor_id=user.id)


async def history(session: AsyncSession, submission_id: int) -> list[SubmissionEvent]:
    query = select(SubmissionEvent).where(SubmissionEvent.submission_id == submission_id)
    return list((await session.execute(query.order_by(SubmissionEvent.id))).scalars())


async def latest_scans(
    session: AsyncSession, *, submission_id: int | None = None, workload_id: int | None = None
) -> list[SecurityScan]:
    """The newest result of each scanner for a submission or a published Cargo."""
    column = SecurityScan.submission_id if submission_id is not None else SecurityScan.workload_id
    key = submission_id if submission_id is not None else workload_id
    query = (
        select(SecurityScan)
        .where(column == key)
        .order_by(SecurityScan.scanner, SecurityScan.created_at.desc())
        .distinct(SecurityScan.scanner)
    )
    return list((await session.execute(query)).scalars())


def findings_of(scans: list[SecurityScan]) -> dict[str, list[trust.Finding]]:
    """Findings of the completed scans, by scanner (missing and failed scanners count as no scan)."""
    return {
        scan.scanner: [trust.Finding.from_dict(f) for f in (scan.report or {}).get("findings", [])]
        for scan in scans
        if scan.status == "completed"
    }


def scan_summary(scans: list[SecurityScan]) -> dict[str, Any]:
    per_scanner = findings_of(scans)
    merged = trust.merge_findings(per_scanner)
    counts = trust.severity_counts(merged)
    allowed, why = trust.max_trust_by_findings(counts) if per_scanner else (0, "no scanner completed")
    return {
        "scanners": [
            {
                "scanner": scan.scanner,
                "status": scan.status,
                "reason": scan.reason,
                "digest": scan.digest,
                "counts": {s: getattr(scan, s) for s in ("critical", "high", "medium", "low")},
                "finished_at": scan.finished_at,
            }
            for scan in scans
        ],
        "counts": counts,
        "findings": [f.as_dict() for f in merged],
        "disagreements": trust.disagreements(per_scanner),
        "max_trust_level": allowed,
        "blocked_because": why,
    }


async def successes_of(session: AsyncSession, workload_id: int | None) -> int:
    if workload_id is None:
        return 0
    query = text(
        "SELECT count(*) FROM cargo_reputation_events WHERE workload_id = :w AND event_type = 'success'"
    )
    return int((await session.execute(query, {"w": workload_id})).scalar() or 0)


async def _facts(
    session: AsyncSession, publisher_id: int, scans: list[SecurityScan], workload_id: int | None, signed: bool
) -> trust.TrustFacts:
    per_scanner = findings_of(scans)
    publisher = await publisher_of(session, publisher_id)
    return trust.TrustFacts(
        scanned=bool(per_scanner),
        counts=trust.severity_counts(trust.merge_findings(per_scanner)),
        successes=await successes_of(session, workload_id),
        publisher_verified=await publisher_is_verified(session, publisher),
        signed=signed,
    )


# --- review and publishing ---------------------------------------------------------------------------


async def review_queue(session: AsyncSession) -> list[WorkloadSubmission]:
    query = select(WorkloadSubmission).where(WorkloadSubmission.status == rules.IN_REVIEW)
    return list((await session.execute(query.order_by(WorkloadSubmission.updated_at))).scalars())


def _reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationFailed("Invalid input", {"reason": ["is required"]})
    return reason.strip()[:2000]


async def reject(session: AsyncSession, admin: User, submission_id: int, reason: Any) -> WorkloadSubmission:
    why = _reason(reason)
    return await transition(
        session, submission_id, "reject", actor_id=admin.id, reason=why, values={"reviewer_id": admin.id}
    )


async def request_changes(
    session: AsyncSession, admin: User, submission_id: int, reason: Any
) -> WorkloadSubmission:
    why = _reason(reason)
    return await transition(
        session,
        submission_id,
        "request_changes",
        actor_id=admin.id,
        reason=why,
        values={"reviewer_id": admin.id},
    )


async def approve(
    session: AsyncSession, admin: User, submission_id: int, trust_level: int | None, notes: str | None
) -> tuple[WorkloadSubmission, Workload]:
    """Approve a reviewed submission at a trust level its facts allow, and publish it (two recorded
    moves in one transaction: the catalogue switches to this version when it commits)."""
    submission = await session.get(WorkloadSubmission, submission_id)
    if submission is None:
        raise NotFound("Submission not found")
    current = await session.get(Workload, submission.workload_id) if submission.workload_id else None
    level = trust_level if trust_level is not None else (current.trust_level if current else 0)
    if level not in (0, 1, 2, 3):
        raise ValidationFailed("Invalid input", {"trust_level": ["must be 0, 1, 2 or 3"]})
    scans = await latest_scans(session, submission_id=submission_id)
    facts = await _facts(
        session, submission.publisher_id, scans, submission.workload_id, submission.signature_verified
    )
    blockers = trust.trust_blockers(level, facts)
    if blockers:
        raise Conflict(
            f"Trust level {level} is not allowed: {'; '.join(blockers)}", code="trust_level_blocked"
        )
    await transition(
        session,
        submission_id,
        "approve",
        actor_id=admin.id,
        reason=notes,
        values={"reviewer_id": admin.id, "review_notes": notes},
    )
    workload = await _publish_workload(session, submission, level)
    submission = await transition(
        session,
        submission_id,
        "publish",
        actor_id=admin.id,
        reason=f"published at L{level}",
        values={"workload_id": workload.id},
    )
    return submission, workload


async def _publish_workload(session: AsyncSession, submission: WorkloadSubmission, level: int) -> Workload:
    spec = submission.spec
    publisher = await publisher_of(session, submission.publisher_id)
    image = rules.image_of(spec)
    limit = spec.get("max_duration_seconds") or None
    if limit is not None and publisher.tier not in ("organization", "partner"):
        limit = min(int(limit), MAX_DURATION_BY_TRUST.get(level, 60))
    values: dict[str, Any] = {
        "slug": submission.slug,
        "name": submission.name,
        "description": spec.get("description"),
        "runtime": spec.get("runtime", "container"),
        "kind": KIND_BY_CATEGORY.get(str(spec.get("category")), "generic"),
        "category": spec.get("category"),
        "container_image": f"{image[0]}@{image[1]}" if image else None,
        "image_digest": image[1] if image else None,
        "wasm_url": spec.get("wasm_url"),
        "wasm_hash": spec.get("wasm_hash"),
        "required_ram_mb": int(spec.get("required_ram_mb", 0)),
        "required_vram_mb": int(spec.get("required_vram_mb", 0)),
        "required_cpu_cores": int(spec.get("required_cpu_cores", 0)),
        "price_per_job": Decimal(str(spec.get("price_per_job", "1"))),
        "input_schema": spec.get("input_schema"),
        "max_duration_seconds": limit,
        "trust_level": level,
        "publisher_id": submission.publisher_id,
        "signed": submission.signature_verified,
        "last_scanned_at": submission.scanned_at,
        "version": submission.version,
        "changelog": spec.get("changelog"),
        "is_enabled": True,
    }
    if submission.workload_id is not None:
        workload = await session.get(Workload, submission.workload_id, with_for_update=True)
        assert workload is not None
        for key, value in values.items():
            setattr(workload, key, value)
    else:
        workload = Workload(**values)
        session.add(workload)
    await session.flush()
    session.add(
        CargoVersion(
            workload_id=workload.id,
            submission_id=submission.id,
            version=submission.version,
            image_digest=values["image_digest"] or values["wasm_hash"],
            changelog=values["changelog"],
        )
    )
    # Scans of the published image also describe the Cargo from now on (rescans append to these).
    await session.execute(
        text("UPDATE security_scans SET workload_id = :w WHERE submission_id = :s"),
        {"w": workload.id, "s": submission.id},
    )
    await session.flush()
    return workload


async def set_trust_level(session: AsyncSession, slug: str, level: Any) -> Workload:
    """An operator's change of a published Cargo's trust level, within what its facts allow."""
    if isinstance(level, bool) or level not in (0, 1, 2, 3):
        raise ValidationFailed("Invalid input", {"trust_level": ["must be 0, 1, 2 or 3"]})
    workload = await _published(session, slug, lock=True)
    if workload.publisher_id is not None and level > 0:
        scans = await latest_scans(session, workload_id=workload.id)
        facts = await _facts(session, workload.publisher_id, scans, workload.id, workload.signed)
        blockers = trust.trust_blockers(level, facts)
        if blockers:
            raise Conflict(
                f"Trust level {level} is not allowed: {'; '.join(blockers)}", code="trust_level_blocked"
            )
    workload.trust_level = level
    await session.flush()
    return workload


async def suspend(session: AsyncSession, slug: str, reason: Any) -> Workload:
    workload = await _published(session, slug, lock=True)
    workload.suspended_at = func.now()
    workload.suspension_reason = _reason(reason)
    await session.flush()
    await session.refresh(workload)
    return workload


async def unsuspend(session: AsyncSession, slug: str) -> Workload:
    workload = await _published(session, slug, lock=True)
    workload.suspended_at = None
    workload.suspension_reason = None
    await session.flush()
    await session.refresh(workload)
    return workload


async def _published(session: AsyncSession, slug: str, *, lock: bool = False) -> Workload:
    query = select(Workload).where(Workload.slug == slug)
    if lock:
        query = query.with_for_update()
    workload = (await session.execute(query)).scalar_one_or_none()
    if workload is None:
        raise NotFound("Cargo not found")
    return workload


# --- the catalogue and reviews -----------------------------------------------------------------------


async def catalogue(
    session: AsyncSession, *, category: str | None = None, q: str | None = None
) -> list[Workload]:
    query = select(Workload).where(Workload.is_enabled.is_(True), Workload.suspended_at.is_(None))
    if category:
        query = query.where(Workload.category == category)
    if q:
        pattern = "%" + re.sub(r"([%_\\])", r"\\\1", q) + "%"
        query = query.where(Workload.name.ilike(pattern) | Workload.description.ilike(pattern))
    return list((await session.execute(query.order_by(Workload.reputation.desc(), Workload.id))).scalars())


async def categories(session: AsyncSession) -> list[tuple[str, int]]:
    query = (
        select(Workload.category, func.count())
        .where(Workload.is_enabled.is_(True), Workload.suspended_at.is_(None), Workload.category.is_not(None))
        .group_by(Workload.category)
        .order_by(Workload.category)
    )
    counts = {str(c): int(n) for c, n in (await session.execute(query)).all()}
    return [(c, counts.get(c, 0)) for c in rules.CATEGORIES]


async def cargo_detail(session: AsyncSession, slug: str) -> dict[str, Any]:
    workload = await _published(session, slug)
    versions = (
        await session.execute(
            select(CargoVersion)
            .where(CargoVersion.workload_id == workload.id)
            .order_by(CargoVersion.id.desc())
        )
    ).scalars()
    rating = (
        await session.execute(
            select(func.avg(CargoReview.rating), func.count()).where(CargoReview.workload_id == workload.id)
        )
    ).one()
    scans = await latest_scans(session, workload_id=workload.id)
    return {
        "workload": workload,
        "versions": [
            {
                "version": v.version,
                "image_digest": v.image_digest,
                "changelog": v.changelog,
                "published_at": v.published_at,
            }
            for v in versions
        ],
        "rating": float(rating[0]) if rating[0] is not None else None,
        "reviews": int(rating[1]),
        "scan": scan_summary(scans),
    }


async def reviews_of(session: AsyncSession, slug: str) -> list[CargoReview]:
    workload = await _published(session, slug)
    query = select(CargoReview).where(CargoReview.workload_id == workload.id).order_by(CargoReview.id.desc())
    return list((await session.execute(query)).scalars())


async def add_review(
    session: AsyncSession, user: User, slug: str, rating: int, comment: str | None, complaint: bool
) -> tuple[CargoReview, list[str]]:
    """A consumer rates a Cargo they ran (one review each); returns the reputation events it gives."""
    workload = await _published(session, slug)
    ran = await session.execute(
        text(
            "SELECT 1 FROM jobs WHERE user_id = :u AND workload_id = :w "
            "AND state IN ('succeeded', 'failed', 'timeout') LIMIT 1"
        ),
        {"u": user.id, "w": workload.id},
    )
    if ran.first() is None:
        raise Forbidden("Only consumers who ran this Cargo can review it")
    inserted = await session.execute(
        insert(CargoReview)
        .values(
            workload_id=workload.id, user_id=user.id, rating=rating, comment=comment, is_complaint=complaint
        )
        .on_conflict_do_nothing()
        .returning(CargoReview.id)
    )
    review_id = inserted.scalar()
    if review_id is None:
        raise Conflict("You already reviewed this Cargo", code="already_reviewed")
    review = await session.get(CargoReview, review_id)
    assert review is not None
    events = (["positive_rating"] if rating >= 4 else []) + (["complaint"] if complaint else [])
    return review, events


# --- keys ----------------------------------------------------------------------------------------------


async def verified_publisher_keys(session: AsyncSession) -> list[dict[str, Any]]:
    """The cosign keys of Verified-or-above publishers whose identity is verified (GET /signing-keys)."""
    rows = (
        await session.execute(
            select(Publisher, User.email)
            .join(User, User.id == Publisher.user_id)
            .where(Publisher.signing_public_key.is_not(None), Publisher.tier.in_(VERIFIED_TIERS))
            .order_by(Publisher.user_id)
        )
    ).all()
    keys = []
    for publisher, email in rows:
        if await is_verified(session, publisher.user_id):
            keys.append(
                {
                    "key_id": f"publisher-{publisher.user_id}",
                    "public_key": publisher.signing_public_key,
                    "algorithm": "ecdsa-p256-sha256",
                    "issuer": email,
                }
            )
    return keys


def timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
