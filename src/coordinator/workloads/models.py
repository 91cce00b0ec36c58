"""Tables of the workloads context: the Cargo catalog, registry submissions and security scans."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, BigInteger, ForeignKey, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.repo.base import Base, Timestamps


class Workload(Timestamps, Base):
    __tablename__ = "workloads"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # container, wasm, llmcpp, onnx, diffusers, coreml
    runtime: Mapped[str] = mapped_column(String(16), server_default="container")
    # chat, image, classification, generic: decides how output is assembled
    kind: Mapped[str] = mapped_column(String(16), server_default="generic")
    container_image: Mapped[str | None] = mapped_column(String(500))
    image_digest: Mapped[str | None] = mapped_column(String(100))
    wasm_url: Mapped[str | None] = mapped_column(String(1000))
    wasm_hash: Mapped[str | None] = mapped_column(String(100))
    model_url: Mapped[str | None] = mapped_column(String(1000))
    model_hash: Mapped[str | None] = mapped_column(String(100))
    onnx_task_type: Mapped[str | None] = mapped_column(String(50))
    required_ram_mb: Mapped[int] = mapped_column(Integer, server_default="0")
    required_vram_mb: Mapped[int] = mapped_column(Integer, server_default="0")
    required_cpu_cores: Mapped[int] = mapped_column(Integer, server_default="0")
    quantization: Mapped[str | None] = mapped_column(String(20))
    platforms: Mapped[list[str]] = mapped_column(ARRAY(String(30)), server_default="{}")
    trust_level: Mapped[int] = mapped_column(Integer, server_default="0")
    price_per_job: Mapped[Decimal] = mapped_column(server_default="1")
    input_schema: Mapped[dict[str, Any] | None]
    cold_start_seconds: Mapped[int] = mapped_column(Integer, server_default="120")
    max_duration_seconds: Mapped[int | None] = mapped_column(Integer)
    is_enabled: Mapped[bool] = mapped_column(server_default="true")
    is_default_chat: Mapped[bool] = mapped_column(server_default="false")
    reputation: Mapped[Decimal] = mapped_column(server_default="1.0")
    publisher_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    signed: Mapped[bool] = mapped_column(server_default="false")
    last_scanned_at: Mapped[datetime | None]
    suspended_at: Mapped[datetime | None]
    # The registry (marketplace/): catalogue category, published version, reputation bookkeeping.
    category: Mapped[str | None] = mapped_column(String(50))
    version: Mapped[str | None] = mapped_column(String(50))
    changelog: Mapped[str | None] = mapped_column(Text)
    success_streak: Mapped[int] = mapped_column(Integer, server_default="0")
    flagged_at: Mapped[datetime | None]
    reputation_warned_at: Mapped[datetime | None]
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    # Bumped by a trigger when a column submissions are checked or priced against changes (migration 0015).
    revision: Mapped[int] = mapped_column(BigInteger, server_default="0")


class WorkloadSubmission(Timestamps, Base):
    __tablename__ = "workload_submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    publisher_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workload_id: Mapped[int | None] = mapped_column(ForeignKey("workloads.id", ondelete="SET NULL"))
    slug: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    # draft, submitted, scanning, in_review, approved, published, rejected, changes_requested
    status: Mapped[str] = mapped_column(String(20), server_default="draft")
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    review_notes: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(50), server_default="1.0.0")
    # Why the last move happened (a failed fetch, a reviewer's reason); shown to the publisher.
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Set by the scan: the highest trust level the findings allow, and the cosign verdict.
    max_trust_level: Mapped[int | None] = mapped_column(Integer)
    signature_verified: Mapped[bool] = mapped_column(server_default="false")
    signature_reason: Mapped[str | None] = mapped_column(Text)
    scanned_at: Mapped[datetime | None]


class SecurityScan(Base):
    __tablename__ = "security_scans"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    workload_id: Mapped[int | None] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"))
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("workload_submissions.id", ondelete="CASCADE")
    )
    image: Mapped[str] = mapped_column(String(500))
    scanner: Mapped[str] = mapped_column(String(20))
    # completed (findings recorded), error (reason says why), scanner_missing
    status: Mapped[str] = mapped_column(String(20), server_default="queued")
    critical: Mapped[int] = mapped_column(Integer, server_default="0")
    high: Mapped[int] = mapped_column(Integer, server_default="0")
    medium: Mapped[int] = mapped_column(Integer, server_default="0")
    low: Mapped[int] = mapped_column(Integer, server_default="0")
    report: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    digest: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)


class CargoReputationEvent(Base):
    __tablename__ = "cargo_reputation_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(30))
    delta: Mapped[Decimal]
    score_after: Mapped[Decimal]
    job_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
