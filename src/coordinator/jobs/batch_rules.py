"""Pure rules of server-side batches: settings, the batch state vocabulary, merging and the outcome."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from coordinator.jobs import rules

MERGE_STRATEGIES = ("concat", "flatten")
FAIL_MODES = ("best_effort", "fail_fast")
MAX_INPUTS = 100

# Internal job state → batch vocabulary (client-api §5.2): queued, running, succeeded, failed, cancelled.
BATCH_STATES = {
    rules.QUEUED: "queued",
    rules.ASSIGNED: "queued",
    rules.RUNNING: "running",
    rules.SUCCEEDED: "succeeded",
    rules.FAILED: "failed",
    rules.TIMEOUT: "failed",
    rules.CANCELLED: "cancelled",
}


def batch_state(state: str) -> str:
    return BATCH_STATES.get(state, "queued")


@dataclass(frozen=True)
class BatchSpec:
    workload: str
    inputs: list[Any]
    merge_strategy: str = "concat"
    fail_mode: str = "best_effort"
    max_parallelism: int | None = None
    region: str | None = None
    budget: Decimal | None = None

    @property
    def parallelism(self) -> int:
        return self.max_parallelism or MAX_INPUTS

    def parent_input(self) -> dict[str, Any]:
        """The parent job's `input` (an object, as the py SDK requires of every Job)."""
        batch: dict[str, Any] = {
            "workload": self.workload,
            "merge_strategy": self.merge_strategy,
            "fail_mode": self.fail_mode,
        }
        if self.max_parallelism is not None:
            batch["max_parallelism"] = self.max_parallelism
        if self.region is not None:
            batch["region"] = self.region
        if self.budget is not None:
            batch["bid_price"] = str(self.budget)
        return {"batch": batch, "inputs_count": len(self.inputs)}

    def config(self) -> dict[str, Any]:
        """`jobs.batch_config` of the parent: the settings plus the inputs still waiting for a slot."""
        return {
            **self.parent_input()["batch"],
            "chunk_count": len(self.inputs),
            "pending": [[i, value] for i, value in enumerate(self.inputs)][self.parallelism :],
            "failed_inputs": {},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchSpec:
        bid = config.get("bid_price")
        return cls(
            workload=str(config["workload"]),
            inputs=[],
            merge_strategy=config.get("merge_strategy", "concat"),
            fail_mode=config.get("fail_mode", "best_effort"),
            max_parallelism=config.get("max_parallelism"),
            region=config.get("region"),
            budget=Decimal(bid) if bid is not None else None,
        )


def _decode(output: str | None) -> Any:
    """A child's output as JSON when it is JSON (image, classification), else the text itself."""
    if output is None:
        return None
    try:
        return json.loads(output)
    except ValueError:
        return output


def merge_outputs(outputs: list[str | None], strategy: str) -> str:
    """The parent's `output`: a JSON array of the children's outputs in batch order (null for a child that
    did not succeed); `flatten` splices outputs that are themselves arrays (one level)."""
    values = [_decode(o) for o in outputs]
    if strategy == "flatten":
        flat: list[Any] = []
        for value in values:
            if isinstance(value, list):
                flat.extend(value)
            else:
                flat.append(value)
        values = flat
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def parent_outcome(child_states: list[str]) -> tuple[str, str | None]:
    """best_effort: the batch succeeds when any child did; otherwise it fails (or is cancelled)."""
    if any(s == rules.SUCCEEDED for s in child_states):
        return rules.SUCCEEDED, None
    if child_states and all(s == rules.CANCELLED for s in child_states):
        return rules.FAILED, "every batch child was cancelled"
    return rules.FAILED, "every batch child failed"


@dataclass(frozen=True)
class Child:
    """One child of a batch: a job row, or an input still waiting (or dropped) with no row (`id` None)."""

    id: uuid.UUID | None
    batch_index: int
    state: str
    error: str | None = None
    host_id: uuid.UUID | None = None
    output: str | None = None

    def view(self, parent_id: uuid.UUID) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": str(self.id) if self.id else f"{parent_id}-{self.batch_index}",
            "batch_index": self.batch_index,
            "state": batch_state(self.state),
        }
        if self.error:
            body["error"] = self.error
        if self.host_id:
            body["host_id"] = str(self.host_id)
        return body


def children_of(config: dict[str, Any], rows: Sequence[Any]) -> list[Child]:
    """Every child in batch order: the rows, then the failed, waiting and dropped inputs of the config."""
    children = {
        r.batch_index: Child(r.id, r.batch_index, r.state, r.error, r.host_id, r.output) for r in rows
    }
    for index, error in (config.get("failed_inputs") or {}).items():
        children.setdefault(int(index), Child(None, int(index), rules.FAILED, error))
    for index, _ in config.get("pending") or []:
        children.setdefault(int(index), Child(None, int(index), rules.QUEUED))
    for index in range(int(config.get("chunk_count", 0))):
        children.setdefault(index, Child(None, index, rules.CANCELLED))  # dropped by fail_fast / cancel
    return [children[i] for i in sorted(children)]


@dataclass(frozen=True)
class BatchStep:
    """What a batch does next, decided in the transaction of a child's end (or its parent's cancel):
    close the parent (state, merged output, error) in that same transaction; after commit, submit the
    released inputs and cancel the listed children (`cancel_reason`)."""

    parent_id: uuid.UUID
    user_id: int
    spec: BatchSpec
    close: tuple[str, str | None, str | None] | None = None
    release: tuple[tuple[int, Any], ...] = ()
    cancel: tuple[uuid.UUID, ...] = ()
    cancel_reason: str = ""


def next_step(parent_id: uuid.UUID, user_id: int, config: dict[str, Any], children: list[Child]) -> BatchStep:
    """After a child ended: fail fast, release waiting inputs into free slots, or merge and close.
    `config["pending"]` is updated in place (the caller stores it)."""
    spec = BatchSpec.from_config(config)
    open_ids = tuple(c.id for c in children if c.id is not None and not rules.is_terminal(c.state))
    failed = [c for c in children if batch_state(c.state) == "failed"]
    if spec.fail_mode == "fail_fast" and failed:
        first = min(failed, key=lambda c: c.batch_index)
        config["pending"] = []
        why = f"batch child {first.batch_index} failed: {first.error or 'failed'}"
        reason = "cancelled: another batch child failed (fail_fast)"
        return BatchStep(
            parent_id, user_id, spec, (rules.FAILED, None, why), cancel=open_ids, cancel_reason=reason
        )
    pending = list(config.get("pending") or [])
    room = max(0, spec.parallelism - len(open_ids))
    release, config["pending"] = pending[:room], pending[room:]
    close: tuple[str, str | None, str | None] | None = None
    if not release and all(rules.is_terminal(c.state) for c in children):
        state, error = parent_outcome([c.state for c in children])
        outputs = [(c.output if c.state == rules.SUCCEEDED else None) for c in children]
        close = (state, merge_outputs(outputs, spec.merge_strategy), error)
    return BatchStep(parent_id, user_id, spec, close, tuple((int(i), v) for i, v in release))
