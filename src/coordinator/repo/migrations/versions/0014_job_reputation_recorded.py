"""when a finished job's Cargo reputation events were recorded (the recorder loop batches them)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("reputation_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs that finished before this revision were counted by the per-job hook it replaces.
    op.execute("UPDATE jobs SET reputation_at = completed_at WHERE completed_at IS NOT NULL")
    op.create_index(
        "ix_jobs_reputation_due",
        "jobs",
        ["completed_at"],
        postgresql_where=sa.text("reputation_at IS NULL AND completed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_reputation_due", table_name="jobs")
    op.drop_column("jobs", "reputation_at")
