"""Pure rules of server-side batches: settings, the batch state vocabulary, merging and the outcome."""

from __future__ import annotations

import json
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
