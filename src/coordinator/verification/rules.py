"""Verification rules (pure): the statuses, the table of allowed moves, Stripe mapping and mail text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A user's status (users.verification_status, the one source every gate reads).
UNVERIFIED = "unverified"
PENDING = "pending"
VERIFIED = "verified"
REJECTED = "rejected"
REVOKED = "revoked"
STATUSES = (UNVERIFIED, PENDING, VERIFIED, REJECTED, REVOKED)

# An attempt's status (verifications.status): the user's status while it is the current attempt;
# `superseded` once the user started again before it was decided.
SUPERSEDED = "superseded"

# Who moved a status (verification_events.actor).
ACTOR_USER, ACTOR_ADMIN, ACTOR_PROVIDER = "user", "admin", "provider"


@dataclass(frozen=True)
class Transition:
    """One allowed move: from any of `from_states` to `to_state`, by `actor`; some need a reason."""

    name: str
    from_states: frozenset[str]
    to_state: str
    actor: str
    needs_reason: bool = False


# Every move of a user's verification status, in one place. Retry after rejection is `start` from
# `rejected`; a revoked user cannot start again on their own (fraud), only an admin can reinstate them.
START = Transition("start", frozenset({UNVERIFIED, PENDING, REJECTED}), PENDING, ACTOR_USER)
PROVIDER_VERIFIED = Transition("provider_verified", frozenset({PENDING}), VERIFIED, ACTOR_PROVIDER)
PROVIDER_REJECTED = Transition("provider_rejected", frozenset({PENDING}), REJECTED, ACTOR_PROVIDER, True)
APPROVE = Transition("approve", frozenset({PENDING, REVOKED}), VERIFIED, ACTOR_ADMIN)
REJECT = Transition("reject", frozenset({PENDING}), REJECTED, ACTOR_ADMIN, True)
REVOKE = Transition("revoke", frozenset({VERIFIED}), REVOKED, ACTOR_ADMIN, True)
TRANSITIONS = (START, PROVIDER_VERIFIED, PROVIDER_REJECTED, APPROVE, REJECT, REVOKE)


def is_verified_status(status: str | None) -> bool:
    """The gates' one question: does this status lift the unverified limits (payouts, publishing, quotas)?"""
    return status == VERIFIED


def can_start(status: str) -> bool:
    return status in START.from_states


# --- Stripe Identity -------------------------------------------------------------------------------

STRIPE_EVENT_PREFIX = "identity.verification_session."
# Marks the sessions this coordinator created (other integrations may share the Stripe account).
STRIPE_USER_METADATA = "coordinator_user_id"


@dataclass(frozen=True)
class StripeOutcome:
    """What a VerificationSession event means for its attempt: a transition (or none) and the why."""

    transition: Transition | None
    reason: str | None = None


def stripe_outcome(event_type: str, session: Mapping[str, Any]) -> StripeOutcome:
    """Map `identity.verification_session.<x>` to a move. `created`/`processing` keep the attempt pending;
    `requires_input` (Stripe could not verify: expired document, mismatching selfie…) rejects it with
    Stripe's reason, and the user may retry; `canceled` rejects it too."""
    kind = event_type.removeprefix(STRIPE_EVENT_PREFIX)
    if kind == "verified":
        return StripeOutcome(PROVIDER_VERIFIED)
    if kind == "requires_input":
        error = session.get("last_error") or {}
        reason = error.get("reason") or error.get("code") or "Stripe could not verify the document"
        return StripeOutcome(PROVIDER_REJECTED, str(reason)[:2000])
    if kind == "canceled":
        return StripeOutcome(PROVIDER_REJECTED, "The verification session was canceled")
    return StripeOutcome(None)


@dataclass(frozen=True)
class VerifiedIdentity:
    """All we keep of a verified identity: the name and the document's issuing country. Never documents,
    images, dates of birth, ID numbers or addresses."""

    name: str | None
    country: str | None


def verified_identity(session: Mapping[str, Any]) -> VerifiedIdentity:
    """Read the name and issuing country from a VerificationSession retrieved with `verified_outputs` and
    `last_verification_report` expanded; every other field of it is dropped here."""
    outputs = session.get("verified_outputs") or {}
    parts = [str(outputs[k]).strip() for k in ("first_name", "last_name") if outputs.get(k)]
    report = session.get("last_verification_report")
    document = report.get("document") if isinstance(report, Mapping) else None
    country = document.get("issuing_country") if isinstance(document, Mapping) else None
    name = " ".join(p for p in parts if p)[:300] or None
    return VerifiedIdentity(name, str(country).upper()[:2] if country else None)


# --- mail to the user on every change --------------------------------------------------------------

_SUBJECTS = {
    PENDING: "We are checking your identity",
    VERIFIED: "Your identity is verified",
    REJECTED: "We could not verify your identity",
    REVOKED: "Your identity verification was revoked",
}

_BODIES = {
    PENDING: "Your identity verification has started. We will write again when it is decided.",
    VERIFIED: (
        "Your identity is verified. Payouts to your Islands, publishing as a Verified publisher and the "
        "higher job and spending limits are now open to you."
    ),
    REJECTED: "Your identity could not be verified. You can start a new verification at any time.",
    REVOKED: (
        "An operator revoked your identity verification. Payouts, Verified publishing and the higher "
        "limits are closed until it is reinstated; contact support if you think this is a mistake."
    ),
}


def status_mail(to_state: str, reason: str | None) -> tuple[str, str]:
    """The subject and body of the mail telling a user their status changed."""
    body = _BODIES.get(to_state, f"Your identity verification status is now: {to_state}.")
    if reason:
        body += f"\n\nReason: {reason}"
    return _SUBJECTS.get(to_state, "Your identity verification changed"), body
