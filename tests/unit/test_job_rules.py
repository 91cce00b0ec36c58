"""Pure job rules: the state table, status mappings, placement filters and scores, ageing."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal

import pytest

from coordinator.hosts.fleet import HostView
from coordinator.jobs import rules


def reachable_from(start: str) -> set[str]:
    """Every state some sequence of allowed moves leads to from `start` (`start` included)."""
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for target in rules.STATES:
            if rules.can_move(state, target) and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def test_the_table_names_every_state_and_only_known_ones() -> None:
    assert set(rules.TRANSITIONS) == set(rules.STATES)
    assert all(targets <= set(rules.STATES) for targets in rules.TRANSITIONS.values())
    assert rules.TERMINAL < set(rules.STATES) and rules.ACTIVE < set(rules.STATES) - rules.TERMINAL


def test_terminal_states_have_no_outgoing_moves_and_are_the_only_dead_ends() -> None:
    for state in rules.STATES:
        moves = [target for target in rules.STATES if rules.can_move(state, target)]
        assert (moves == []) is rules.is_terminal(state), (state, moves)


def test_every_state_is_reachable_from_a_new_job() -> None:
    assert reachable_from(rules.QUEUED) == set(rules.STATES)


def test_every_non_terminal_state_can_reach_every_terminal_one() -> None:
    # Nothing is stuck: from any live state a job can still be cancelled, fail, and (through a requeue)
    # succeed or time out.
    for state in set(rules.STATES) - rules.TERMINAL:
        assert rules.TERMINAL <= reachable_from(state), state


def test_the_only_way_back_is_the_requeue() -> None:
    # Without the moves into `queued` (a job whose Island lost it), the table has no cycle: every other
    # move is forward, so a job cannot loop between live states.
    forward = {
        s: {t for t in rules.STATES if rules.can_move(s, t) and t != rules.QUEUED} for s in rules.STATES
    }

    def loops(state: str) -> bool:
        seen, frontier = set(), list(forward[state])
        while frontier:
            nxt = frontier.pop()
            if nxt == state:
                return True
            if nxt not in seen:
                seen.add(nxt)
                frontier.extend(forward[nxt])
        return False

    assert not any(loops(state) for state in rules.STATES)
    assert {s for s in rules.STATES if rules.can_move(s, rules.QUEUED)} == rules.ACTIVE


@pytest.mark.parametrize("to_state", rules.STATES)
def test_the_guard_of_each_update_admits_exactly_the_allowed_sources(to_state: str) -> None:
    # `sources_of` is the `WHERE state = ANY(...)` of the guarded UPDATE: an illegal source is refused.
    sources = rules.sources_of(to_state)
    for state in rules.STATES:
        assert (state in sources) is rules.can_move(state, to_state), (state, to_state)
    if to_state != rules.QUEUED:
        assert not set(sources) & rules.TERMINAL


def test_public_status_uses_only_the_sdk_enum() -> None:
    assert {s: rules.public_status(s) for s in rules.STATES} == {
        "queued": "pending",
        "assigned": "queued",
        "running": "running",
        "succeeded": "completed",
        "failed": "failed",
        "cancelled": "cancelled",
        "timeout": "timeout",
    }


def test_island_states_map_with_aliases() -> None:
    assert rules.island_state("started") == rules.island_state("streaming") == "running"
    assert rules.island_state("succeeded") == rules.island_state("completed") == "succeeded"
    assert rules.island_state("failed") == "failed" and rules.island_state("cancelled") == "cancelled"
    assert rules.island_state("exploded") is None


def test_island_fault_classification() -> None:
    assert rules.failure_is_islands_fault("Failed to ensure container image")
    assert rules.failure_is_islands_fault("Job x requires Docker but Docker is not available. Install Docker")
    assert not rules.failure_is_islands_fault("Container crash: General error (application failure)")
    assert not rules.failure_is_islands_fault(None)


def test_ageing_lets_an_old_low_priority_job_overtake() -> None:
    assert rules.effective_priority(0, 1010) > rules.effective_priority(100, 0)
    assert rules.effective_priority(5, 0) == 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2.5", Decimal("2.5")),
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),
        ("0", None),
        (-1, None),
        ("x", None),
        (True, None),
        ("NaN", None),
        ("Infinity", None),
    ],
)
def test_budget_parsing(raw: object, expected: Decimal | None) -> None:
    assert rules.parse_budget(raw) == expected


def host(**kw: object) -> HostView:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "status": "online",
        "approved": True,
        "ram_mb": 16384,
        "cpu_cores": 8,
        "max_concurrent": 4,
        "supported_runtimes": ("container", "wasm"),
    }
    values.update(kw)
    return HostView(**values)  # type: ignore[arg-type]


NEEDS = rules.JobNeeds(
    workload_id=7,
    slug="llm-chat",
    runtime="container",
    kind="chat",
    required_ram_mb=2048,
    budget=Decimal(1),
    owner_id=1,
)


def test_hard_filters() -> None:
    assert rules.eligible(host(), NEEDS)
    assert not rules.eligible(host(approved=False), NEEDS)
    assert not rules.eligible(host(status="suspended"), NEEDS)
    assert not rules.eligible(host(supported_runtimes=("wasm",)), NEEDS)
    assert not rules.eligible(host(ram_mb=1024), NEEDS)
    assert not rules.eligible(host(asking_prices={"llm-chat": Decimal(2)}), NEEDS)
    assert rules.eligible(host(asking_prices={"_default": Decimal("0.5")}), NEEDS)
    assert not rules.eligible(host(owner_id=1), NEEDS)  # no self-dealing on paid jobs
    excluded = host()
    assert not rules.eligible(
        excluded, rules.JobNeeds(**{**NEEDS.__dict__, "excluded_host_ids": frozenset({str(excluded.id)})})
    )
    gpu = dataclasses.replace(NEEDS, required_vram_mb=6144)
    assert not rules.eligible(host(gpu_vram_mb=None), gpu) and rules.eligible(host(gpu_vram_mb=8192), gpu)
    regional = dataclasses.replace(NEEDS, region="eu")
    assert rules.eligible(host(region="eu-west"), regional) and not rules.eligible(
        host(region="us"), regional
    )
    assert not rules.eligible(host(region=None), regional)


def test_score_terms_are_normalised_and_warm_wins() -> None:
    cold, warm = host(), host(warm_workload_ids=frozenset({"7"}))
    for h in (cold, warm):
        assert all(0.0 <= v <= 1.0 for v in rules.score_terms(h, NEEDS).values())
    chosen = rules.choose_host([cold, warm], NEEDS)
    assert chosen is not None and chosen.host_id == warm.id and chosen.terms["warm"] == 1.0


def test_ties_go_to_the_island_idle_longest_and_full_islands_are_skipped() -> None:
    recent, idle = host(idle_since_monotonic=100.0), host(idle_since_monotonic=5.0)
    full = host(warm_workload_ids=frozenset({"7"}), reserved=4)
    chosen = rules.choose_host([recent, full, idle], NEEDS)
    assert chosen is not None and chosen.host_id == idle.id
    assert rules.choose_host([full], NEEDS) is None


def test_clearing_price_is_the_ask_times_surge_capped_at_the_budget() -> None:
    cheap = host(asking_prices={"_default": Decimal("0.4")})
    assert rules.clearing_price(cheap, NEEDS, Decimal(1)) == Decimal("0.4")
    assert rules.clearing_price(cheap, NEEDS, Decimal("1.25")) == Decimal("0.5")
    assert rules.clearing_price(host(asking_prices={"_default": Decimal(3)}), NEEDS, Decimal(1)) == 1
    # Without a posted ask the exchange's fallback applies: base price × hardware tier (CPU-only ×0.5).
    based = dataclasses.replace(NEEDS, price_per_job=Decimal("0.8"))
    assert rules.asking_price(host(), based) == Decimal("0.4")
    assert rules.clearing_price(host(), based, Decimal(1)) == Decimal("0.4")
    # The placement filter uses the same function: an RTX 4090 (×2.0) asks 1.6 > budget 1.
    assert not rules.eligible(host(gpu_model="RTX 4090", gpu_vram_mb=24_576), based)
    assert rules.eligible(host(gpu_model="RTX 4090", gpu_vram_mb=24_576), NEEDS)  # base price 0


def test_why_a_job_waits_names_the_most_fundamental_reason() -> None:
    assert rules.unplaced_reason([], NEEDS).reason == "capacity"  # nobody online
    # An empty runtime list is none (never the default).
    assert not rules.eligible(host(supported_runtimes=()), NEEDS)
    assert rules.unplaced_reason([host(supported_runtimes=())], NEEDS).reason == "runtime"
    assert rules.unplaced_reason([host(ram_mb=1024)], NEEDS).reason == "runtime"
    far = rules.unplaced_reason([host(region="eu-west")], dataclasses.replace(NEEDS, region="us"))
    assert far.reason == "region"
    dear = rules.unplaced_reason(
        [host(asking_prices={"llm-chat": Decimal(3)}), host(asking_prices={"llm-chat": Decimal(2)})], NEEDS
    )
    assert dear.reason == "price" and dear.lowest_ask == Decimal(2)
    assert dear.record(NEEDS.budget) == {
        "reason": "price",
        "message": dear.message,
        "budget": 1.0,
        "lowest_ask": 2.0,
    }
    assert rules.unplaced_reason([host(max_concurrent=1, reserved=1)], NEEDS).reason == "capacity"
    assert rules.lowest_live_ask([host(asking_prices={"_default": Decimal("0.3")})], NEEDS) == Decimal("0.3")
    assert rules.lowest_live_ask([host(owner_id=1)], NEEDS) is None  # the owner's own Island does not count
