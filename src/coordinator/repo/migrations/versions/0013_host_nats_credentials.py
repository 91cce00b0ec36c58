"""per-Island NATS credentials (auth callout) and how each Island authenticated

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 21:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("nats_credential", sa.String(length=10), nullable=True))
    op.create_table(
        "host_nats_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Uuid(), nullable=False),
        sa.Column("secret_digest", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_host_nats_credentials"),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name="fk_host_nats_credentials_host_id_hosts", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name="fk_host_nats_credentials_created_by_users",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_host_nats_credentials_host_id", "host_nats_credentials", ["host_id"])


def downgrade() -> None:
    op.drop_index("ix_host_nats_credentials_host_id", table_name="host_nats_credentials")
    op.drop_table("host_nats_credentials")
    op.drop_column("hosts", "nats_credential")
