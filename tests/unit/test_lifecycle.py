"""The lifecycle engine on the in-memory store: which moves apply from which states, which effects run in
the transaction, which hooks after commit, and that money is settled once and conserved."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.jobs import lifecycle, moves, rules
from coordinator.jobs.lifecycle import Inputs
from coordinator.jobs.memory import MemoryStore

ISLAND = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)
USER = 7
ONE_JOB_MOVES = [m for m in moves.MOVES.values() if m not in (moves.SUBMIT, moves.ASSIGN)]


def store_with(state: str, *, budget: str = "1") -> tuple[MemoryStore, uuid.UUID]:
    store = MemoryStore(balances={USER: Decimal(10)})
    job = store.submit(USER, Decimal(budget))
    if state != rules.QUEUED:
        assert store.assign(job.id, ISLAND, Decimal("0.5"))
        job.state = state
    return store, job.id


def inputs_for(move: moves.Move) -> Inputs:
    """What the move's real caller passes: the Island it must hold and the attempt, where it names one."""
    if move.target == rules.QUEUED or move is moves.START:
        return Inputs(host_id=ISLAND, attempt=1)
    return Inputs()


def test_the_table_is_legal_by_the_state_machine() -> None:
    assert moves.check_table() == []
    for move in moves.MOVES.values():
        for source in move.sources:
            assert rules.can_move(source, move.target), move.name
    # Every legal edge of the state machine is some move's (nothing in TRANSITIONS is unreachable).
    edges = {(s, m.target) for m in moves.MOVES.values() for s in m.sources}
    legal = {(s, t) for s, targets in rules.TRANSITIONS.items() for t in targets}
    assert legal <= edges


@pytest.mark.parametrize("move", ONE_JOB_MOVES, ids=lambda m: m.name)
@pytest.mark.parametrize("state", rules.STATES)
async def test_a_move_applies_exactly_from_its_sources(move: moves.Move, state: str) -> None:
    store, job_id = store_with(state)
    result = await lifecycle.transition_in(store, move, job_id, inputs_for(move))
    if state in move.sources:
        assert result is not None, f"{move.name} refused from {state}"
        assert (result.from_state, result.to_state, result.move) == (state, move.target, move.name)
        assert store.jobs[job_id].state == move.target
    else:
        assert result is None, f"{move.name} applied from {state}"
        assert store.jobs[job_id].state == state


async def test_only_the_assigned_island_can_move_its_job() -> None:
    store, job_id = store_with(rules.RUNNING)
    assert await lifecycle.transition_in(store, moves.SUCCEED, job_id, Inputs(host_id=OTHER)) is None
    assert await lifecycle.transition_in(store, moves.START, job_id, Inputs(host_id=OTHER)) is None
    stale = Inputs(host_id=ISLAND, attempt=2)
    assert await lifecycle.transition_in(store, moves.REQUEUE, job_id, stale) is None
    assert store.jobs[job_id].state == rules.RUNNING and store.settlements == []


async def test_success_settles_once_pays_the_island_and_gives_karma() -> None:
    store, job_id = store_with(rules.RUNNING, budget="2")
    result = await lifecycle.transition_in(store, moves.SUCCEED, job_id, Inputs(host_id=ISLAND, output="ok"))
    assert result is not None and result.released_host_id == ISLAND and result.reported_by == ISLAND
    again = await lifecycle.transition_in(store, moves.SUCCEED, job_id, Inputs(host_id=ISLAND))
    assert again is None
    assert store.settlements == [(job_id, rules.SUCCEEDED)]
    assert store.karma == [(ISLAND, "job_succeeded", job_id)]
    assert store.balances[USER] == Decimal("9.5")  # 10 − 2 charged + 1.5 unused budget refunded
    assert store.earned[ISLAND] + store.fees == Decimal("0.5")
    assert store.jobs[job_id].output == "ok"


@pytest.mark.parametrize(
    ("error", "penalty"),
    [
        ("Failed to ensure container image: pull denied", "job_failed"),
        ("Container crash: General error (application failure)", None),
    ],
)
async def test_a_reported_failure_costs_karma_only_when_it_is_the_islands_fault(
    error: str, penalty: str | None
) -> None:
    store, job_id = store_with(rules.RUNNING)
    assert await lifecycle.transition_in(store, moves.FAIL, job_id, Inputs(host_id=ISLAND, error=error))
    assert store.karma == ([] if penalty is None else [(ISLAND, penalty, job_id)])
    assert store.balances[USER] == Decimal(10)  # refunded in full


async def test_a_sweep_names_the_penalty_and_the_island_it_left_pays_it() -> None:
    store, job_id = store_with(rules.RUNNING)
    inputs = Inputs(host_id=ISLAND, attempt=1, penalty="lease_expired")
    result = await lifecycle.transition_in(store, moves.REQUEUE, job_id, inputs)
    assert result is not None and result.released_host_id == ISLAND and result.host_id is None
    assert result.reported_by is None  # the sweep decided it, not the Island
    assert store.karma == [(ISLAND, "lease_expired", job_id)]
    assert store.jobs[job_id].excluded_host_ids == [str(ISLAND)]
    assert store.settlements == []  # a requeue moves no money
    assert not store.assign(job_id, ISLAND)  # never the same Island again


async def test_a_give_back_costs_nobody_karma_and_moves_no_money() -> None:
    store, job_id = store_with(rules.ASSIGNED)
    inputs = Inputs(host_id=ISLAND, attempt=1, penalty="lease_expired")
    result = await lifecycle.transition_in(store, moves.GIVE_BACK, job_id, inputs)
    assert result is not None and result.released_host_id == ISLAND
    assert store.karma == [] and store.settlements == []
    assert store.assign(job_id, ISLAND)  # the same Island may be tried again


def test_the_island_is_told_to_cancel_only_when_the_coordinator_ended_the_job() -> None:
    for move in moves.MOVES.values():
        by_coordinator = moves.tells_island(move, reported_by=None, released=ISLAND)
        assert by_coordinator == (move in (moves.CANCEL, moves.TIME_OUT)), move.name
        assert not moves.tells_island(move, reported_by=ISLAND, released=ISLAND)
        assert not moves.tells_island(move, reported_by=None, released=None)


def test_hooks_are_declared_in_one_order_and_money_moves_only_at_the_end() -> None:
    for move in moves.MOVES.values():
        assert list(move.hooks) == sorted(move.hooks, key=moves.HOOK_ORDER.index), move.name
        assert (moves.SETTLE in move.effects) == (move in moves.FINISH_MOVES.values()), move.name
        # every entry to the queue wakes the dispatchers (a freed slot alone may not: `Dispatcher`); a
        # submit whose transaction also assigned the job left nothing in the queue
        enters_queue = move.target == rules.QUEUED and move is not moves.SUBMIT_PLACED
        assert (moves.WAKE_DISPATCHER in move.hooks) == enters_queue, move.name
    assert moves.BATCH_CLOSE_MOVES[rules.SUCCEEDED].effects == (moves.STORE_RESULT,)


STEPS = st.lists(
    st.sampled_from(["assign", "start", "requeue", "give_back", "succeed", "fail", "cancel", "time_out"]),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS, budget=st.decimals(min_value="0.01", max_value="5", places=2))
async def test_any_sequence_of_moves_settles_a_job_at_most_once_and_conserves_its_budget(
    steps: list[str], budget: Decimal
) -> None:
    store = MemoryStore(balances={USER: Decimal(10)})
    job = store.submit(USER, budget)
    islands = [uuid.UUID(int=i) for i in range(1, 6)]
    for step in steps:
        current = store.jobs[job.id]
        if step == "assign":
            store.assign(job.id, next(i for i in islands if str(i) not in current.excluded_host_ids))
            continue
        move = moves.MOVES[step]
        inputs = Inputs(host_id=current.host_id, attempt=current.attempt)
        if move in moves.FINISH_MOVES.values() and step in ("cancel", "time_out"):
            inputs = Inputs()  # the coordinator decides these
        await lifecycle.transition_in(store, move, job.id, inputs)
    final = store.jobs[job.id]
    assert final.settled == (1 if rules.is_terminal(final.state) else 0)
    paid = sum(store.earned.values(), Decimal(0)) + store.fees
    if rules.is_terminal(final.state):
        assert store.balances[USER] + paid == Decimal(10)
    else:
        assert store.balances[USER] == Decimal(10) - budget and paid == 0


def test_only_moves_that_write_nothing_but_their_guarded_update_skip_the_transaction() -> None:
    from coordinator.jobs import moves as table

    single = {m.name for m in table.MOVES.values() if m.one_statement}
    assert single == {
        "submit",
        "submit_placed",
        "assign",
        "give_back",
        "start",
        "close_batch_ok",
        "close_batch_failed",
    }
    assert not table.SUCCEED.one_statement and not table.REQUEUE.one_statement


def test_a_success_missing_chunks_fails_only_after_the_grace_and_once_the_output_consumer_caught_up() -> None:
    from coordinator.jobs.output_check import GIVE_UP_SECONDS, given_up

    first, grace = 100.0, 8.0
    assert not given_up(first, first + 7.9, grace, drained_at=first + 5)  # within the grace
    assert given_up(first, first + 8.0, grace, drained_at=first + 5)  # drained since: the chunks are lost
    assert not given_up(first, first + 30, grace, drained_at=first - 1)  # lagging since before it: wait
    assert given_up(first, first + 8.0, grace, drained_at=None)  # no output consumer here: the grace only
    assert given_up(first, first + GIVE_UP_SECONDS, grace, drained_at=first - 1)  # never for ever
