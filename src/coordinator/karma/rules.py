"""Karma arithmetic (pure): pending minutes, the recovery multiplier, penalties, monetization."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

# Penalties of domain-rules (decided values); the event type is what `karma_events.event_type` records.
PENALTIES: dict[str, int] = {
    "job_failed": -1,
    "lease_expired": -2,
    "timeout": -1,
    "impersonation": -5,
}
# Penalties that also flag the Island for an operator's review.
FLAGGING_EVENTS = frozenset({"impersonation"})


@dataclass(frozen=True)
class KarmaPolicy:
    """The karma rules of one metro (region); defaults are the network-wide settings."""

    minutes_per_karma: int = 60
    recovery_multiplier: Decimal = Decimal("1.5")
    monetization_threshold: int = 10


@dataclass(frozen=True)
class KarmaState:
    karma: int
    pending_minutes: int


@dataclass(frozen=True)
class SuccessOutcome:
    """What one successful job does to an Island's karma."""

    before: KarmaState
    after: KarmaState
    minutes: Decimal
    effective_minutes: int

    @property
    def delta(self) -> int:
        return self.after.karma - self.before.karma


def effective_minutes(duration_seconds: float | Decimal, karma: int, policy: KarmaPolicy) -> int:
    """Minutes of compute a job counts for: ×recovery multiplier below the threshold, floored."""
    minutes = Decimal(str(max(duration_seconds, 0))) / 60
    if karma < policy.monetization_threshold:
        minutes *= policy.recovery_multiplier
    return int(minutes.to_integral_value(rounding=ROUND_FLOOR))


def apply_success(
    state: KarmaState, duration_seconds: float | Decimal, policy: KarmaPolicy
) -> SuccessOutcome:
    """Add a job's effective minutes to `pending_minutes`; every full `minutes_per_karma` becomes 1 karma."""
    gained = effective_minutes(duration_seconds, state.karma, policy)
    pending = state.pending_minutes + gained
    per = max(policy.minutes_per_karma, 1)
    karma_gained = pending // per
    after = KarmaState(karma=state.karma + karma_gained, pending_minutes=pending - karma_gained * per)
    return SuccessOutcome(
        before=state,
        after=after,
        minutes=Decimal(str(max(duration_seconds, 0))) / 60,
        effective_minutes=gained,
    )


def is_monetizable(karma: int, policy: KarmaPolicy) -> bool:
    """Karma at or above the threshold makes an Island's earnings payable."""
    return karma >= policy.monetization_threshold
