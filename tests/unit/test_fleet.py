"""The hosts context's fleet (pure): the one HostView builder, candidate selection, reservation, and the
one "capable Island" rule the submit-time check, the sweeps and placement share."""

from __future__ import annotations

import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from coordinator.hosts.fleet import FleetView, HostView, view_of
from coordinator.jobs import rules

NOW = 1000.0


def row(**values: Any) -> SimpleNamespace:
    """A `hosts` row as a query returns it (columns by attribute), with NULLs where unset."""
    columns = dict.fromkeys(
        (
            "owner_id region platform transport gpu_model gpu_vram_mb cpu_cores ram_mb supported_runtimes "
            "max_concurrent active_jobs warm_workload_ids asking_prices rtt_ms karma"
        ).split()
    )
    return SimpleNamespace(**{**columns, "id": uuid.uuid4(), "status": "online", "approved": True, **values})


def test_the_builder_reads_a_row_with_nulls_and_defaults() -> None:
    view = view_of(row(), last_heartbeat=NOW)
    assert view.transport == "nats" and view.max_concurrent == 1 and view.reported_active == 0
    assert view.supported_runtimes == () and view.karma == 0 and view.asking_prices == {}
    assert view.agent_version is None and view.last_heartbeat_monotonic == NOW


def test_the_builder_keeps_valid_asks_only_and_the_columns_given() -> None:
    raw = {"llm-chat": "0.4", "_default": 1, "bad": "x", "negative": "-1", "nothing": None}
    view = view_of(
        row(
            asking_prices=raw,
            supported_runtimes=["container", "wasm"],
            max_concurrent=4,
            active_jobs=2,
            warm_workload_ids=["llm-chat"],
            karma=7,
            agent_version="1.2.3",
            transport="websocket",
        )
    )
    assert view.asking_prices == {"llm-chat": Decimal("0.4"), "_default": Decimal(1)}
    assert view.supported_runtimes == ("container", "wasm") and view.free_slots == 2
    assert view.warm_workload_ids == frozenset({"llm-chat"}) and view.karma == 7
    assert view.agent_version == "1.2.3" and view.transport == "websocket"


def fleet_of(*views: HostView) -> FleetView:
    fleet = FleetView(heartbeat_timeout=30, clock=lambda: NOW)
    for view in views:
        fleet.put(view)
    return fleet


def live(**values: Any) -> HostView:
    return view_of(row(**values), last_heartbeat=NOW - 1)


def test_candidates_are_approved_live_and_not_self_gated() -> None:
    good = live()
    busy = live(active_jobs=1)  # a candidate: its capacity is counted at dispatch
    gated = live()
    gated.self_gated = True
    others = [
        live(approved=False),
        live(status="suspended"),
        live(status="offline"),
        view_of(row(), last_heartbeat=NOW - 31),  # silent past the timeout
        gated,
    ]
    fleet = fleet_of(good, busy, *others)
    assert {h.id for h in fleet.candidates()} == {good.id, busy.id}
    assert [h.id for h in fleet.available()] == [good.id]  # the candidates with a free slot


def test_reservation_counts_the_coordinators_jobs_and_takes_slots() -> None:
    host = live(max_concurrent=2)
    fleet = fleet_of(host)
    fleet.count_reserved([host], {host.id: 1})
    assert host.reserved == 1 and host.free_slots == 1
    assert fleet.reserve(host.id)
    assert host.free_slots == 0 and not fleet.reserve(host.id)  # full: no slot to take
    assert not fleet.reserve(uuid.uuid4())  # an Island the fleet does not know
    fleet.count_reserved([host], {})  # none of its jobs is unfinished any more
    assert host.reserved == 0


def needs(**values: Any) -> rules.JobNeeds:
    return rules.JobNeeds(**{"workload_id": 1, "slug": "llm-chat", "runtime": "container", **values})


def test_the_capable_island_rule() -> None:
    host = live(supported_runtimes=["container"], ram_mb=8000, region="eu-west", platform="linux-x86_64")
    assert rules.could_run(host, needs())
    assert rules.could_run(host, needs(region="eu"))  # a region prefix
    assert not rules.could_run(host, needs(region="us"))
    assert not rules.could_run(host, needs(runtime="wasm"))
    assert not rules.could_run(host, needs(required_ram_mb=16000))
    assert not rules.could_run(host, needs(platforms=("darwin-arm64",)))
    assert not rules.could_run(host, needs(excluded_host_ids=frozenset({str(host.id)})))
    host.status = "suspended"
    assert not rules.could_run(host, needs())


def test_placement_starts_from_the_capable_island_rule() -> None:
    host = live(supported_runtimes=["container"], asking_prices={"_default": "0.5"})
    paid = needs(budget=Decimal(1))
    assert rules.eligible(host, paid) and rules.lowest_live_ask([host], paid) == Decimal("0.5")
    excluded = needs(budget=Decimal(1), excluded_host_ids=frozenset({str(host.id)}))
    assert not rules.eligible(host, excluded) and rules.lowest_live_ask([host], excluded) is None
