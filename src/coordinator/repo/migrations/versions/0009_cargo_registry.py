"""the Cargo registry: publishers, submission history, versions, reviews, scan reasons, reputation state

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    for name, column in (
        ("category", sa.String(length=50)),
        ("version", sa.String(length=50)),
        ("changelog", sa.Text()),
        ("flagged_at", sa.DateTime(timezone=True)),
        ("reputation_warned_at", sa.DateTime(timezone=True)),
        ("suspension_reason", sa.Text()),
    ):
        op.add_column("workloads", sa.Column(name, column, nullable=True))
    op.add_column("workloads", sa.Column("success_streak", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "workload_submissions",
        sa.Column("version", sa.String(length=50), server_default="1.0.0", nullable=False),
    )
    op.add_column("workload_submissions", sa.Column("status_reason", sa.Text(), nullable=True))
    op.add_column("workload_submissions", sa.Column("max_trust_level", sa.Integer(), nullable=True))
    op.add_column(
        "workload_submissions",
        sa.Column("signature_verified", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column("workload_submissions", sa.Column("signature_reason", sa.Text(), nullable=True))
    op.add_column("workload_submissions", sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_workload_submissions_status"), "workload_submissions", ["status"], unique=False)
    op.add_column("security_scans", sa.Column("digest", sa.String(length=100), nullable=True))
    op.add_column("security_scans", sa.Column("reason", sa.Text(), nullable=True))
    op.create_index(
        op.f("ix_security_scans_submission_id"), "security_scans", ["submission_id"], unique=False
    )
    op.create_index(op.f("ix_security_scans_workload_id"), "security_scans", ["workload_id"], unique=False)
    # A job's lifecycle event counts once per Cargo, even when an after-commit hook runs twice.
    op.create_index(
        "uq_cargo_reputation_events_job_event",
        "cargo_reputation_events",
        ["job_id", "event_type"],
        unique=True,
        postgresql_where=sa.text("job_id IS NOT NULL"),
    )

    op.create_table(
        "publishers",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("tier", sa.String(length=20), server_default="individual", nullable=False),
        sa.Column("cargo_limit", sa.Integer(), nullable=True),
        sa.Column("signing_public_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_publishers_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_publishers")),
    )
    op.create_table(
        "submission_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("submission_id", sa.Integer(), nullable=False),
        sa.Column("move", sa.String(length=30), nullable=False),
        sa.Column("from_status", sa.String(length=20), nullable=False),
        sa.Column("to_status", sa.String(length=20), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["workload_submissions.id"],
            name=op.f("fk_submission_events_submission_id_workload_submissions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_submission_events_actor_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submission_events")),
    )
    op.create_index(
        op.f("ix_submission_events_submission_id"), "submission_events", ["submission_id"], unique=False
    )
    op.create_table(
        "cargo_versions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("workload_id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.Integer(), nullable=True),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("image_digest", sa.String(length=100), nullable=True),
        sa.Column("changelog", sa.Text(), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["workload_id"],
            ["workloads.id"],
            name=op.f("fk_cargo_versions_workload_id_workloads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["workload_submissions.id"],
            name=op.f("fk_cargo_versions_submission_id_workload_submissions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cargo_versions")),
        sa.UniqueConstraint("workload_id", "version", name=op.f("uq_cargo_versions_workload_id")),
    )
    op.create_index(op.f("ix_cargo_versions_workload_id"), "cargo_versions", ["workload_id"], unique=False)
    op.create_table(
        "cargo_reviews",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("workload_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("is_complaint", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["workload_id"],
            ["workloads.id"],
            name=op.f("fk_cargo_reviews_workload_id_workloads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_cargo_reviews_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cargo_reviews")),
        sa.UniqueConstraint("workload_id", "user_id", name=op.f("uq_cargo_reviews_workload_id")),
    )
    op.create_index(op.f("ix_cargo_reviews_workload_id"), "cargo_reviews", ["workload_id"], unique=False)


def downgrade() -> None:
    op.drop_table("cargo_reviews")
    op.drop_table("cargo_versions")
    op.drop_table("submission_events")
    op.drop_table("publishers")
    op.drop_index("uq_cargo_reputation_events_job_event", table_name="cargo_reputation_events")
    op.drop_index(op.f("ix_security_scans_workload_id"), table_name="security_scans")
    op.drop_index(op.f("ix_security_scans_submission_id"), table_name="security_scans")
    op.drop_column("security_scans", "reason")
    op.drop_column("security_scans", "digest")
    op.drop_index(op.f("ix_workload_submissions_status"), table_name="workload_submissions")
    for name in (
        "scanned_at",
        "signature_reason",
        "signature_verified",
        "max_trust_level",
        "status_reason",
        "version",
    ):
        op.drop_column("workload_submissions", name)
    for name in (
        "success_streak",
        "suspension_reason",
        "reputation_warned_at",
        "flagged_at",
        "changelog",
        "version",
        "category",
    ):
        op.drop_column("workloads", name)
