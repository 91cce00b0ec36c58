"""index jobs by completion time for the telemetry collectors

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # `coordinator_jobs_finished_last_hour` reads the last hour of completions every 10 s.
    op.create_index(
        "ix_jobs_completed",
        "jobs",
        ["completed_at"],
        unique=False,
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_completed", table_name="jobs", postgresql_where=sa.text("completed_at IS NOT NULL")
    )
