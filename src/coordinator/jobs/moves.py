"""The job lifecycle as data: every move, its guard, its effects in the transaction, its hooks after commit.

Each move is one row of `MOVES`, in the spirit of Prefect's orchestration policies: the states it may
start from (checked against `rules.TRANSITIONS`), the state it reaches, the effects that run inside the
move's transaction (money, karma, output) and the hooks that run once it committed (broadcast, metrics,
wake-ups, the Island). Every SQL guard on `jobs.state` is rendered here (`guard_sql`, `states_sql`); a
unit test fails on a hand-written one. `jobs/lifecycle.py` applies the table; nothing here does I/O."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.jobs import rules
from coordinator.jobs.rules import ASSIGNED, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TIMEOUT

# ---------------------------------------------------------------- effects and hooks (names, documented)

# In the move's transaction (a failure rolls the move back).
STORE_RESULT = "store_result"  # error, usage and output on the row (the guarded UPDATE itself)
SETTLE = "settle"  # success pays the clearing price (Island share, fee), anything else refunds in full
KARMA_SUCCESS = "karma_success"  # +karma for the Island that finished it (once per Island and job)
PENALIZE = "penalize"  # −karma for the Island it left, when the move's inputs name a penalty
EXCLUDE_ISLAND = "exclude_island"  # the Island it left is never tried again for this job
ROLL_UP_BATCH = "roll_up_batch"  # a batch child's end: the parent's next step; its close, in this transaction

EFFECTS: dict[str, str] = {
    STORE_RESULT: "error, usage and output stored by the guarded UPDATE",
    SETTLE: "settle the money: pay on success, else refund the budget in full",
    KARMA_SUCCESS: "karma for the Island that succeeded",
    PENALIZE: "karma penalty for the Island, when the inputs name one",
    EXCLUDE_ISLAND: "the Island it left is excluded for the next attempts",
    ROLL_UP_BATCH: "batch child or parent: the batch's next step, the parent closed in this transaction",
}

# After commit (a failure is logged; the durable state is already right, workers repair the rest).
FLEET_KARMA = "fleet_karma"  # copy the transaction's new karma balances into the fleet view
FREE_CAPACITY = "free_capacity"  # the Island's slot in the fleet view is free again
METRICS = "metrics"  # transition counter and the `job.*` log event
TELL_OUTPUT = "tell_output"  # the output sink: status event, or the terminal event and final write
WAKE_DISPATCHER = "wake_dispatcher"  # this replica's dispatcher and every other one
TELL_ACCOUNT = "tell_account"  # `user:<id>` events: job status, balance after charge or refund
CANCEL_ON_ISLAND = "cancel_on_island"  # CancelJob to the Island, when the coordinator decided the end
ADVANCE_BATCH = "advance_batch"  # submit the batch inputs the roll-up released, cancel the ones it dropped
EXTENSIONS = "extensions"  # hooks registered by other parts (intake cache, tests)

HOOKS: dict[str, str] = {
    FLEET_KARMA: "new karma balances into the fleet view",
    FREE_CAPACITY: "the Island's slot is free in the fleet view",
    METRICS: "transition counter and log event",
    TELL_OUTPUT: "output sink: status, or terminal event",
    WAKE_DISPATCHER: "wake the dispatchers",
    TELL_ACCOUNT: "account events (status, balance)",
    CANCEL_ON_ISLAND: "CancelJob to the Island (coordinator's decision only)",
    ADVANCE_BATCH: "submit released batch inputs, cancel dropped children",
    EXTENSIONS: "registered hooks: intake cache",
}


@dataclass(frozen=True)
class Move:
    """One legal move of a job. `sources` empty means the move creates the row (submit)."""

    name: str
    sources: tuple[str, ...]
    target: str
    effects: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    doc: str = ""

    @property
    def terminal(self) -> bool:
        return rules.is_terminal(self.target)

    @property
    def one_statement(self) -> bool:
        """Its guarded UPDATE is all it writes (no money, karma or batch effect): no transaction needed."""
        return set(self.effects) <= {STORE_RESULT}


# The order hooks run in, whatever order a move lists them in.
HOOK_ORDER = (
    FLEET_KARMA,
    CANCEL_ON_ISLAND,
    METRICS,
    FREE_CAPACITY,
    TELL_OUTPUT,
    WAKE_DISPATCHER,
    TELL_ACCOUNT,
    ADVANCE_BATCH,
    EXTENSIONS,
)


def _hooks(*names: str) -> tuple[str, ...]:
    return tuple(sorted(set(names), key=HOOK_ORDER.index))


_BROADCAST = _hooks(METRICS, TELL_OUTPUT, TELL_ACCOUNT, EXTENSIONS)
_END = _hooks(FLEET_KARMA, FREE_CAPACITY, ADVANCE_BATCH, *_BROADCAST)


def _finish(name: str, target: str, effects: tuple[str, ...], hooks: tuple[str, ...], doc: str) -> Move:
    return Move(name, rules.sources_of(target), target, effects, hooks, doc)


SUBMIT = Move(
    "submit",
    (),
    QUEUED,
    (),
    _hooks(METRICS, WAKE_DISPATCHER, TELL_ACCOUNT, EXTENSIONS),
    "charged and queued",
)
# A submit whose transaction also assigned the job (`jobs.service.submit`): the assign move follows it in
# the same transaction, and nothing is left in the queue to wake a dispatcher for.
SUBMIT_PLACED = Move(
    "submit_placed",
    (),
    QUEUED,
    (),
    _hooks(METRICS, TELL_ACCOUNT, EXTENSIONS),
    "charged, queued and assigned in one transaction",
)
ASSIGN = Move("assign", (QUEUED,), ASSIGNED, (), _BROADCAST, "leased to an Island")
GIVE_BACK = Move(
    "give_back", (ASSIGNED,), QUEUED, (), _hooks(FREE_CAPACITY, WAKE_DISPATCHER), "AssignJob publish failed"
)
START = Move("start", (ASSIGNED,), RUNNING, (), _BROADCAST, "the Island started it")
REQUEUE = Move(
    "requeue",
    (ASSIGNED, RUNNING),
    QUEUED,
    (EXCLUDE_ISLAND, PENALIZE),
    _hooks(FLEET_KARMA, FREE_CAPACITY, WAKE_DISPATCHER, *_BROADCAST),
    "lease lost or never started",
)
SUCCEED = _finish(
    "succeed", SUCCEEDED, (STORE_RESULT, SETTLE, KARMA_SUCCESS, ROLL_UP_BATCH), _END, "the Island succeeded"
)
FAIL = _finish(
    "fail",
    FAILED,
    (STORE_RESULT, SETTLE, PENALIZE, ROLL_UP_BATCH),
    _END,
    "failed, dead-lettered, unplaceable",
)
CANCEL = _finish(
    "cancel",
    CANCELLED,
    (STORE_RESULT, SETTLE, ROLL_UP_BATCH),
    _hooks(*_END, CANCEL_ON_ISLAND),
    "by the owner or its batch",
)
TIME_OUT = _finish(
    "time_out",
    TIMEOUT,
    (STORE_RESULT, SETTLE, PENALIZE, ROLL_UP_BATCH),
    _hooks(*_END, CANCEL_ON_ISLAND),
    "past the Cargo's maximum duration",
)
# A batch parent carries no money (its children do): it ends with its merged output only.
CLOSE_BATCH_OK = Move("close_batch_ok", (RUNNING,), SUCCEEDED, (STORE_RESULT,), _BROADCAST, "batch succeeded")
CLOSE_BATCH_FAILED = Move(
    "close_batch_failed", (RUNNING,), FAILED, (STORE_RESULT,), _BROADCAST, "batch failed"
)

MOVES: dict[str, Move] = {
    m.name: m
    for m in (
        SUBMIT,
        SUBMIT_PLACED,
        ASSIGN,
        GIVE_BACK,
        START,
        REQUEUE,
        SUCCEED,
        FAIL,
        CANCEL,
        TIME_OUT,
        CLOSE_BATCH_OK,
        CLOSE_BATCH_FAILED,
    )
}

# The move that ends a job in each terminal state (Island reports and coordinator decisions alike).
FINISH_MOVES: dict[str, Move] = {SUCCEEDED: SUCCEED, FAILED: FAIL, CANCELLED: CANCEL, TIMEOUT: TIME_OUT}
BATCH_CLOSE_MOVES: dict[str, Move] = {SUCCEEDED: CLOSE_BATCH_OK, FAILED: CLOSE_BATCH_FAILED}

# States in which a job holds an Island and a lease (the states a requeue starts from).
LEASED: tuple[str, ...] = REQUEUE.sources
# States whose result row may still be completed by the output sink (usage, assembled output).
FINISHED: tuple[str, ...] = tuple(s for s in rules.STATES if rules.is_terminal(s))


def finish_move(to_state: str) -> Move:
    return FINISH_MOVES[to_state]


def check_table() -> list[str]:
    """Every move's sources must be legal by `rules.TRANSITIONS`; returns the violations (none)."""
    problems = []
    for move in MOVES.values():
        problems += [
            f"{move.name}: {s} → {move.target}" for s in move.sources if not rules.can_move(s, move.target)
        ]
        problems += [f"{move.name}: unknown effect {e}" for e in move.effects if e not in EFFECTS]
        problems += [f"{move.name}: unknown hook {h}" for h in move.hooks if h not in HOOKS]
        if KARMA_SUCCESS in move.effects and SETTLE not in move.effects:
            problems.append(f"{move.name}: {KARMA_SUCCESS} is written with the settlement ({SETTLE})")
    return problems


# ---------------------------------------------------------------- guards as SQL


def states_sql(states: Iterable[str], column: str = "jobs.state") -> str:
    """`column = 'x'` or `column IN ('x', 'y')` for known states only (the one renderer of state guards)."""
    chosen = tuple(states)
    unknown = [s for s in chosen if s not in rules.STATES]
    if unknown or not chosen:
        raise ValueError(f"not job states: {chosen!r}")
    if len(chosen) == 1:
        return f"{column} = '{chosen[0]}'"
    return f"{column} IN (" + ", ".join(f"'{s}'" for s in chosen) + ")"


def guard_sql(move: Move, column: str = "jobs.state") -> str:
    """The WHERE part of a move's guarded UPDATE (or of the locking SELECT that picks its jobs)."""
    return states_sql(move.sources, column)


def target_sql(move: Move) -> str:
    """The SET part: `state = '<target>'`."""
    return f"state = '{move.target}'"


# ---------------------------------------------------------------- decisions


def penalty_for(
    move: Move, *, penalty: str | None, reported_by: uuid.UUID | None, error: str | None
) -> str | None:
    """The karma event a move costs the Island it left: the caller's (a sweep's) or, for a failure the
    Island reported, `job_failed` when the error is the Island's fault; None when nobody pays."""
    if PENALIZE not in move.effects:
        return None
    if penalty is not None:
        return penalty
    if move is FAIL and reported_by is not None and rules.failure_is_islands_fault(error):
        return "job_failed"
    return None


def tells_island(move: Move, *, reported_by: uuid.UUID | None, released: uuid.UUID | None) -> bool:
    """Whether a CancelJob goes to the Island: only when the coordinator (not the Island) ended the job."""
    return CANCEL_ON_ISLAND in move.hooks and reported_by is None and released is not None


def lifecycle_table() -> str:
    """The lifecycle as one Markdown table (docs/architecture.md holds a copy; a test compares them)."""
    lines = [
        "| Move | Guard (from → to) | Effects in the transaction | Hooks after commit |",
        "|---|---|---|---|",
    ]
    for move in MOVES.values():
        sources = ", ".join(move.sources) if move.sources else "(new row)"
        lines.append(
            f"| `{move.name}` | {sources} → {move.target} | {', '.join(move.effects) or '—'} "
            f"| {', '.join(move.hooks) or '—'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m coordinator.jobs.moves` prints the table for docs/architecture.md
    print(lifecycle_table())
