"""Pure rules of the hosts context: pairing codes, initial status, and what a viewer may see of an Island."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from coordinator.protocol.heartbeat import MobileState

# The one "can this Island run this runtime" rule, for the contexts (defined with the wire, in protocol).
from coordinator.protocol.runtimes import DEFAULT_RUNTIMES as DEFAULT_RUNTIMES
from coordinator.protocol.runtimes import can_run as can_run

# No I, O, 1 or 0: codes are read off a terminal and typed by hand (domain-rules, Islands).
PAIRING_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LENGTH = 6
ALREADY_PAIRED = "Island already paired"


def new_pairing_code(choice: Callable[[str], str] = secrets.choice) -> str:
    return "".join(choice(PAIRING_ALPHABET) for _ in range(PAIRING_CODE_LENGTH))


def normalize_pairing_code(raw: str) -> str | None:
    """Accept what a person types (`abc-234`, ` ABC 234 `); None when it cannot be a code."""
    code = "".join(c for c in raw.upper() if c not in " -")
    if len(code) != PAIRING_CODE_LENGTH or any(c not in PAIRING_ALPHABET for c in code):
        return None
    return code


def initial_status(approval_required: bool) -> tuple[str, bool]:
    """(status, approved) of an Island seen for the first time."""
    return ("pending_approval", False) if approval_required else ("online", True)


def visible_to(status: str, approved: bool, owner_id: int | None, viewer_id: int, is_admin: bool) -> bool:
    """The hosts list is public to any key for online, approved Islands; owners and admins see the rest."""
    return is_admin or owner_id == viewer_id or (status == "online" and approved)


# Mobile self-gating (channels spec §4): a phone on battery under this level takes no new work.
LOW_BATTERY_PERCENT = 20
HOT_THERMAL_STATES = frozenset({"serious", "critical"})


def self_gated(mobile: MobileState | None) -> bool:
    """Whether a phone or browser Island's own state makes it unavailable for new work (it keeps what it
    has): on battery below 20 %, a serious or critical thermal state, or a cellular network."""
    if mobile is None:
        return False
    on_low_battery = (
        mobile.charging is False
        and mobile.battery_level is not None
        and mobile.battery_level < LOW_BATTERY_PERCENT
    )
    return on_low_battery or mobile.thermal_state in HOT_THERMAL_STATES or mobile.network == "cellular"
