"""Request and response models of the registry endpoints (`marketplace.py`, `admin_marketplace.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coordinator.marketplace import publishers
from coordinator.marketplace.tables import CargoReview, SubmissionEvent
from coordinator.workloads import rules as workload_rules
from coordinator.workloads.models import Workload, WorkloadSubmission


class CargoSpec(BaseModel):
    """The Cargo fields of a submission (checked further by `submission_rules.validate_spec`)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, max_length=5000)
    category: str | None = None
    runtime: str | None = None
    image: str | None = Field(None, max_length=400, description="registry/repository, optionally @sha256:…")
    image_digest: str | None = Field(None, description="sha256:<64 hex>; images are referenced by digest")
    wasm_url: str | None = Field(None, max_length=1000)
    wasm_hash: str | None = None
    input_schema: dict[str, Any] | None = None
    required_ram_mb: int | None = None
    required_vram_mb: int | None = None
    required_cpu_cores: int | None = None
    runtimes: list[str] | None = None
    price_per_job: float | None = None
    changelog: str | None = Field(None, max_length=5000)
    max_duration_seconds: int | None = None

    def spec(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SubmissionCreate(CargoSpec):
    slug: str = Field(max_length=100)
    name: str = Field(max_length=200)
    version: str = Field("1.0.0", max_length=50)


class SubmissionUpdate(CargoSpec):
    name: str | None = Field(None, max_length=200)
    version: str | None = Field(None, max_length=50)


class SubmissionEventOut(BaseModel):
    move: str
    from_status: str
    to_status: str
    actor_id: int | None
    reason: str | None
    at: datetime

    @classmethod
    def of(cls, event: SubmissionEvent) -> SubmissionEventOut:
        return cls(
            move=event.move,
            from_status=event.from_status,
            to_status=event.to_status,
            actor_id=event.actor_id,
            reason=event.reason,
            at=event.created_at,
        )


class SubmissionOut(BaseModel):
    id: int
    slug: str
    name: str
    version: str
    status: str
    status_reason: str | None
    publisher_id: int
    workload_id: int | None
    spec: dict[str, Any]
    max_trust_level: int | None
    signature_verified: bool
    signature_reason: str | None
    scanned_at: datetime | None
    created_at: datetime
    updated_at: datetime
    scan: dict[str, Any] | None = None
    history: list[SubmissionEventOut] = []

    @classmethod
    def of(
        cls,
        s: WorkloadSubmission,
        scan: dict[str, Any] | None = None,
        history: list[SubmissionEvent] | None = None,
    ) -> SubmissionOut:
        return cls(
            id=s.id,
            slug=s.slug,
            name=s.name,
            version=s.version,
            status=s.status,
            status_reason=s.status_reason,
            publisher_id=s.publisher_id,
            workload_id=s.workload_id,
            spec=s.spec,
            max_trust_level=s.max_trust_level,
            signature_verified=s.signature_verified,
            signature_reason=s.signature_reason,
            scanned_at=s.scanned_at,
            created_at=s.created_at,
            updated_at=s.updated_at,
            scan=scan,
            history=[SubmissionEventOut.of(e) for e in history or []],
        )


class SubmissionAnswer(BaseModel):
    data: SubmissionOut


class SubmissionList(BaseModel):
    data: list[SubmissionOut]


class CargoOut(BaseModel):
    id: int
    slug: str
    name: str
    description: str | None
    category: str | None
    version: str | None
    runtime: str
    runtime_type: str
    trust_level: int
    trust_name: str
    sandbox_tier: str
    max_duration_seconds: int
    price_per_job: float
    reputation: float
    publisher_id: int | None
    signed: bool
    suspended: bool
    suspension_reason: str | None
    input_schema: dict[str, Any] | None

    @classmethod
    def of(cls, w: Workload) -> CargoOut:
        return cls(
            id=w.id,
            slug=w.slug,
            name=w.name,
            description=w.description,
            category=w.category,
            version=w.version,
            runtime=w.runtime,
            runtime_type=workload_rules.public_runtime_type(w.runtime),
            trust_level=w.trust_level,
            trust_name=workload_rules.TRUST_LEVELS.get(w.trust_level, "sandbox"),
            sandbox_tier=workload_rules.sandbox_tier(w.trust_level),
            max_duration_seconds=workload_rules.max_duration_seconds(w.trust_level, w.max_duration_seconds),
            price_per_job=float(w.price_per_job),
            reputation=float(w.reputation),
            publisher_id=w.publisher_id,
            signed=bool(w.signed),
            suspended=w.suspended_at is not None,
            suspension_reason=w.suspension_reason,
            input_schema=w.input_schema,
        )


class CargoList(BaseModel):
    data: list[CargoOut]


class CargoAnswer(BaseModel):
    data: CargoOut


class VersionOut(BaseModel):
    version: str
    image_digest: str | None
    changelog: str | None
    published_at: datetime


class CargoDetailOut(CargoOut):
    versions: list[VersionOut]
    rating: float | None
    reviews: int
    scan: dict[str, Any]


class CargoDetailAnswer(BaseModel):
    data: CargoDetailOut


class CategoryOut(BaseModel):
    name: str
    count: int


class CategoryList(BaseModel):
    data: list[CategoryOut]


class ReviewIn(BaseModel):
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)
    complaint: bool = False


class ReviewOut(BaseModel):
    id: int
    user_id: int
    rating: int
    comment: str | None
    is_complaint: bool
    created_at: datetime

    @classmethod
    def of(cls, r: CargoReview) -> ReviewOut:
        return cls(
            id=r.id,
            user_id=r.user_id,
            rating=r.rating,
            comment=r.comment,
            is_complaint=r.is_complaint,
            created_at=r.created_at,
        )


class ReviewAnswer(BaseModel):
    data: ReviewOut


class ReviewList(BaseModel):
    data: list[ReviewOut]


class PublisherIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str | None = None
    signing_public_key: str | None = Field(None, max_length=10_000)


class AdminPublisherIn(PublisherIn):
    cargo_limit: int | None = Field(None, ge=0, le=100_000)


class PublisherOut(BaseModel):
    user_id: int
    tier: str
    cargo_limit: int | None
    signing_public_key: str | None


class PublisherAnswer(BaseModel):
    data: PublisherOut


class ApproveIn(BaseModel):
    trust_level: int | None = Field(None, ge=0, le=3)
    notes: str | None = Field(None, max_length=2000)


class ReasonIn(BaseModel):
    reason: str = Field(max_length=2000)


class TrustIn(BaseModel):
    trust_level: int = Field(ge=0, le=3)


class SigningKey(BaseModel):
    key_id: str
    public_key: str
    algorithm: str | None = None
    issuer: str | None = None


def publisher_out(publisher: Any) -> PublisherOut:
    return PublisherOut(**publishers.publisher_view(publisher))
