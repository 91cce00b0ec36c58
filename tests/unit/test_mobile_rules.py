"""Mobile self-gating (channels spec §4): the pure rule and the heartbeat's optional mobile fields."""

from __future__ import annotations

import json

import pytest

from coordinator.hosts.rules import self_gated
from coordinator.protocol.codec import ProtocolError
from coordinator.protocol.heartbeat import Heartbeat, MobileState, parse_heartbeat


@pytest.mark.parametrize(
    ("mobile", "gated"),
    [
        (None, False),
        (MobileState(battery_level=19, charging=False), True),
        (MobileState(battery_level=19, charging=True), False),
        (MobileState(battery_level=20, charging=False), False),
        (MobileState(battery_level=90, charging=False, thermal_state="serious"), True),
        (MobileState(thermal_state="critical"), True),
        (MobileState(thermal_state="fair", network="wifi"), False),
        (MobileState(network="cellular", charging=True, battery_level=100), True),
    ],
)
def test_self_gating(mobile: MobileState | None, gated: bool) -> None:
    assert self_gated(mobile) is gated


def test_mobile_fields_round_trip_and_are_absent_for_desktops() -> None:
    beat = Heartbeat(
        "h", mobile=MobileState(battery_level=55, charging=False, thermal_state="fair", network="wifi")
    )
    parsed = parse_heartbeat(beat.encode())
    assert parsed.mobile == beat.mobile
    assert parse_heartbeat(Heartbeat("h").encode()).mobile is None
    assert "battery_level" not in Heartbeat("h").to_dict()


@pytest.mark.parametrize(
    "extra",
    [
        {"battery_level": 101},
        {"charging": "yes"},
        {"thermal_state": "hot"},
        {"network": "5g"},
        {"battery_level": "1"},
    ],
)
def test_bad_mobile_fields_are_refused(extra: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        parse_heartbeat(json.dumps({**Heartbeat("h").to_dict(), **extra}).encode())
