"""verification: status changes with who and why, applied Stripe Identity events, one pending attempt per user

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USER_STATUSES = "('unverified', 'pending', 'verified', 'rejected', 'revoked')"


def upgrade() -> None:
    op.alter_column("verifications", "notes", new_column_name="reason")
    op.create_index("ix_verifications_provider_ref", "verifications", ["provider", "provider_ref"])
    # Older undecided attempts of a user (none in practice) give way to the newest before the unique index.
    op.execute(
        """
        UPDATE verifications v SET status = 'superseded'
        WHERE status = 'pending' AND EXISTS (
            SELECT 1 FROM verifications n WHERE n.user_id = v.user_id AND n.status = 'pending' AND n.id > v.id
        )
        """
    )
    op.create_index(
        "uq_verifications_pending_user",
        "verifications",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_check_constraint(
        op.f("ck_users_verification_status"), "users", f"verification_status IN {USER_STATUSES}"
    )
    op.create_table(
        "verification_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("verification_id", sa.Integer(), nullable=True),
        sa.Column("from_status", sa.String(length=16), nullable=False),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_verification_events_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["verification_id"],
            ["verifications.id"],
            name=op.f("fk_verification_events_verification_id_verifications"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"],
            ["users.id"],
            name=op.f("fk_verification_events_actor_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_events")),
    )
    op.create_index(op.f("ix_verification_events_user_id"), "verification_events", ["user_id"])
    op.create_table(
        "stripe_identity_events",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("session_ref", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=30), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_stripe_identity_events")),
    )


def downgrade() -> None:
    op.drop_table("stripe_identity_events")
    op.drop_index(op.f("ix_verification_events_user_id"), table_name="verification_events")
    op.drop_table("verification_events")
    op.drop_constraint(op.f("ck_users_verification_status"), "users", type_="check")
    op.drop_index("uq_verifications_pending_user", table_name="verifications")
    op.drop_index("ix_verifications_provider_ref", table_name="verifications")
    op.alter_column("verifications", "reason", new_column_name="notes")
