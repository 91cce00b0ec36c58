"""The batch roll-up, inside the transaction of a move that ends a batch child or cancels a batch parent
(the lifecycle effect `roll_up_batch`).

The parent row is locked first, so concurrent child ends on several replicas decide one after another:
each waiting input is released once and the parent is closed once, by the engine, in the same
transaction as the child's end. Submitting the released inputs and cancelling children are moves of their
own, run after commit by the `advance_batch` hook (`jobs/batches.py`)."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from coordinator.jobs import rules
from coordinator.jobs.batch_rules import BatchSpec, BatchStep, children_of, next_step
from coordinator.repo.raw import Sql

# Serialises every decision about one batch (release, finish) across replicas.
LOCK_PARENT_SQL = text(
    "SELECT id, user_id, workload_id, state, batch_config, created_at FROM jobs "
    "WHERE id = :id AND batch_config IS NOT NULL FOR NO KEY UPDATE"
)

# The children of a batch, in batch order.
CHILDREN_SQL = text(
    "SELECT id, batch_index, state, error, host_id, output FROM jobs "
    "WHERE parent_id = :id ORDER BY batch_index"
)

SAVE_CONFIG_SQL = text("UPDATE jobs SET batch_config = :config WHERE id = :id").bindparams(
    bindparam("config", type_=JSONB)
)


async def child_ended(session: Sql, parent_id: uuid.UUID) -> BatchStep | None:
    """A child of `parent_id` just ended in this transaction: the batch's next step (None once the
    parent is closed)."""
    parent = (await session.execute(LOCK_PARENT_SQL, {"id": parent_id})).first()
    if parent is None or parent.state != rules.RUNNING:
        return None
    config = dict(parent.batch_config)
    children = children_of(config, (await session.execute(CHILDREN_SQL, {"id": parent_id})).all())
    step = next_step(parent_id, parent.user_id, config, children)
    await session.execute(SAVE_CONFIG_SQL, {"id": parent_id, "config": config})
    return step


async def parent_cancelled(session: Sql, parent_id: uuid.UUID) -> BatchStep | None:
    """The batch parent was just cancelled in this transaction: drop its waiting inputs; its unfinished
    children are cancelled after commit."""
    parent = (await session.execute(LOCK_PARENT_SQL, {"id": parent_id})).first()
    if parent is None:
        return None
    config = dict(parent.batch_config)
    rows = (await session.execute(CHILDREN_SQL, {"id": parent_id})).all()
    config["pending"] = []
    await session.execute(SAVE_CONFIG_SQL, {"id": parent_id, "config": config})
    open_ids = tuple(r.id for r in rows if not rules.is_terminal(r.state))
    spec = BatchSpec.from_config(config)
    return BatchStep(
        parent_id, parent.user_id, spec, cancel=open_ids, cancel_reason="cancelled with its batch"
    )
