"""a Cargo's revision: bumped by the database whenever a column a submission relies on changes

Submit validates and prices against a cached copy of the Cargo and charges in one statement that checks the
revision it was given (`jobs.repository.SUBMIT_SQL`); a stale copy is reloaded and the submit redone. The
trigger makes every writer (the ORM, the registry, an operator's psql) bump it; the columns the reputation
recorder writes on each batch leave it alone, so a busy Cargo keeps its cache.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Columns that change without changing what a submission is checked or priced against.
_UNTRACKED = (
    "ARRAY['revision', 'updated_at', 'reputation', 'success_streak', 'flagged_at', 'reputation_warned_at']"
)


def upgrade() -> None:
    op.add_column("workloads", sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(
        f"""
        CREATE FUNCTION workloads_bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF to_jsonb(NEW) - {_UNTRACKED} IS DISTINCT FROM to_jsonb(OLD) - {_UNTRACKED} THEN
                NEW.revision := OLD.revision + 1;
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER workloads_revision BEFORE UPDATE ON workloads "
        "FOR EACH ROW EXECUTE FUNCTION workloads_bump_revision()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER workloads_revision ON workloads")
    op.execute("DROP FUNCTION workloads_bump_revision()")
    op.drop_column("workloads", "revision")
