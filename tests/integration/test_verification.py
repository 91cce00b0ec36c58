"""Verification: the built-in admin-reviewed flow through the API, the rules table, and each gate flipping
with the status (payouts, the unverified submit quotas, the Verified-publisher check)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select, text

from coordinator.accounts.models import EmailOutbox
from coordinator.billing import payouts
from coordinator.billing.providers import VirtualProvider
from coordinator.config import Settings
from coordinator.runtime import Runtime
from coordinator.verification import rules
from coordinator.verification import service as verification
from coordinator.verification.providers import BuiltinProvider
from tests.factories import Consumer, make_consumer, seed_cargos
from tests.integration.test_payouts import MONDAY, _earn, _island, _payouts
from tests.job_stack import CHAT, JobStack, job_stack, submit
from tests.job_support import make_island

# --- rules (pure) ----------------------------------------------------------------------------------


def test_the_transition_table() -> None:
    assert {t.name for t in rules.TRANSITIONS} == {
        "start",
        "provider_verified",
        "provider_rejected",
        "approve",
        "reject",
        "revoke",
    }
    assert rules.can_start("unverified") and rules.can_start("rejected") and rules.can_start("pending")
    assert not rules.can_start("verified") and not rules.can_start("revoked")
    assert rules.REVOKE.from_states == {"verified"} and rules.REVOKE.needs_reason
    assert all(t.to_state in rules.STATUSES for t in rules.TRANSITIONS)
    assert [s for s in rules.STATUSES if rules.is_verified_status(s)] == ["verified"]


def test_stripe_events_map_to_moves() -> None:
    error = {"last_error": {"code": "selfie_face_mismatch", "reason": "The selfie does not match."}}
    assert rules.stripe_outcome("identity.verification_session.verified", {}).transition is (
        rules.PROVIDER_VERIFIED
    )
    rejected = rules.stripe_outcome("identity.verification_session.requires_input", error)
    assert (rejected.transition, rejected.reason) == (rules.PROVIDER_REJECTED, "The selfie does not match.")
    coded = rules.stripe_outcome(
        "identity.verification_session.requires_input", {"last_error": {"code": "x"}}
    )
    assert coded.reason == "x"
    assert rules.stripe_outcome("identity.verification_session.canceled", {}).transition is (
        rules.PROVIDER_REJECTED
    )
    for kind in ("created", "processing", "redacted"):
        assert rules.stripe_outcome(f"identity.verification_session.{kind}", {}).transition is None


def test_only_the_name_and_issuing_country_are_read_from_a_session() -> None:
    session = {
        "verified_outputs": {"first_name": "Grace", "last_name": "Hopper", "dob": {"year": 1906}},
        "last_verification_report": {"document": {"issuing_country": "us", "number": "123"}},
    }
    assert rules.verified_identity(session) == rules.VerifiedIdentity("Grace Hopper", "US")
    assert rules.verified_identity({"last_verification_report": "vr_1"}) == rules.VerifiedIdentity(None, None)


def test_stripe_identity_needs_its_keys() -> None:
    with pytest.raises(ValueError, match="STRIPE_IDENTITY_WEBHOOK_SECRET"):
        Settings(env="test", verification_provider="stripe", stripe_api_key="sk_test")
    assert Settings(env="test").verification_provider == "builtin"


# --- the built-in flow through the API -------------------------------------------------------------


async def _subjects(runtime: Runtime, email: str) -> list[str]:
    async with runtime.db.session() as session:
        rows = await session.execute(
            select(EmailOutbox.subject).where(EmailOutbox.recipient == email).order_by(EmailOutbox.id)
        )
        return list(rows.scalars())


async def _get(http: httpx.AsyncClient, path: str, who: Consumer) -> Any:
    response = await http.get(path, headers=who.headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_builtin_flow_reject_retry_approve_revoke_through_the_api(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    user = await make_consumer(runtime, "grace@example.com")
    admin = await make_consumer(runtime, "ops@example.com", admin=True)
    base = f"/api/v1/admin/verifications/{user.user.id}"

    missing = await http.post("/api/v1/verification/start", headers=user.headers, json={"country": "1"})
    assert missing.status_code == 422
    assert set(missing.json()["errors"]) == {"legal_name", "country"}
    assert (await _get(http, "/api/v1/verification/status", user))["status"] == "unverified"

    body = {"legal_name": "Grace Brewster Hopper", "country": "us"}
    started = await http.post("/api/v1/verification/start", headers=user.headers, json=body)
    assert started.status_code == 201, started.text
    data = started.json()["data"]
    assert (data["status"], data["provider"], data["country"], data["client_secret"]) == (
        "pending",
        "builtin",
        "US",
        None,
    )
    assert (await http.get("/api/v1/admin/verifications", headers=user.headers)).status_code == 403
    [queued] = await _get(http, "/api/v1/admin/verifications", admin)
    assert (queued["user_id"], queued["email"], queued["verified_name"]) == (
        user.user.id,
        "grace@example.com",
        "Grace Brewster Hopper",
    )

    no_reason = await http.post(f"{base}/reject", headers=admin.headers, json={})
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["errors"]
    rejected = await http.post(f"{base}/reject", headers=admin.headers, json={"reason": "Name is illegible"})
    assert rejected.status_code == 200
    assert rejected.json()["data"]["status"] == "rejected"
    status = await _get(http, "/api/v1/verification/status", user)
    assert (status["status"], status["reason"], status["verified_name"], status["can_start"]) == (
        "rejected",
        "Name is illegible",
        None,  # a stated name that was not verified is not kept
        True,
    )
    assert await _get(http, "/api/v1/admin/verifications", admin) == []
    assert (await http.post(f"{base}/approve", headers=admin.headers)).status_code == 409

    retry = await http.post(
        "/api/v1/verification/start",
        headers=user.headers,
        json={"legal_name": "Grace Hopper", "country": "US"},
    )
    assert retry.status_code == 201
    approved = await http.post(f"{base}/approve", headers=admin.headers)
    assert approved.status_code == 200 and approved.json()["data"]["reviewer_id"] == admin.user.id
    status = await _get(http, "/api/v1/verification/status", user)
    assert (status["status"], status["verified_name"], status["country"]) == (
        "verified",
        "Grace Hopper",
        "US",
    )
    assert (await http.post("/api/v1/verification/start", headers=user.headers, json=body)).status_code == 409

    no_revoke_reason = await http.post(f"{base}/revoke", headers=admin.headers)
    assert no_revoke_reason.status_code == 422
    revoked = await http.post(f"{base}/revoke", headers=admin.headers, json={"reason": "Chargeback fraud"})
    assert revoked.json()["data"]["status"] == "revoked"
    assert (await http.post("/api/v1/verification/start", headers=user.headers, json=body)).status_code == 409

    history = await _get(http, f"{base}/history", admin)
    assert [(h["from_status"], h["to_status"], h["actor"], h["reason"]) for h in history] == [
        ("unverified", "pending", "user", None),
        ("pending", "rejected", "admin", "Name is illegible"),
        ("rejected", "pending", "user", None),
        ("pending", "verified", "admin", None),
        ("verified", "revoked", "admin", "Chargeback fraud"),
    ]
    assert [h["actor_id"] for h in history] == [
        user.user.id,
        admin.user.id,
        user.user.id,
        *[admin.user.id] * 2,
    ]
    assert await _subjects(runtime, "grace@example.com") == [
        "We are checking your identity",
        "We could not verify your identity",
        "We are checking your identity",
        "Your identity is verified",
        "Your identity verification was revoked",
    ]
    assert (
        await http.get("/api/v1/admin/verifications/999999/history", headers=admin.headers)
    ).status_code == 404
    unknown = await http.post("/api/v1/admin/verifications/999999/approve", headers=admin.headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_the_stripe_webhook_is_absent_when_stripe_is_not_configured(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/verification/stripe/webhook", content=b"{}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_every_verification_route_declares_its_answers(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/api/v1/openapi.json")).json()
    routes = {p: ops for p, ops in spec["paths"].items() if "verification" in p}
    assert len(routes) == 8
    for path, ops in routes.items():
        for method, op in ops.items():
            success = op["responses"].get("200") or op["responses"].get("201")
            assert success["content"]["application/json"]["schema"]["$ref"], (method, path)
            errors = [code for code in op["responses"] if code.startswith("4")]
            assert errors, (method, path)
            for code in errors:
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorEnvelope"), (method, path, code)


# --- the gates -------------------------------------------------------------------------------------


async def _verify(runtime: Runtime, user_id: int, admin_id: int) -> None:
    """Through the service the API uses: a built-in statement, approved by an admin."""
    await verification.start(
        runtime.db, runtime.mailer, BuiltinProvider(), user_id, legal_name="Owner", country="NL"
    )
    async with runtime.db.transaction() as session:
        await verification.decide(session, runtime.mailer, user_id, rules.APPROVE, admin_id=admin_id)


async def _decide(runtime: Runtime, user_id: int, move: rules.Transition, admin_id: int) -> None:
    async with runtime.db.transaction() as session:
        await verification.decide(session, runtime.mailer, user_id, move, admin_id=admin_id, reason="fraud")


async def test_payouts_skip_unverified_owners_and_say_why_until_verified(runtime: Runtime) -> None:
    owner = (await make_consumer(runtime, "owner@example.com", credits=Decimal(0))).user.id
    admin = (await make_consumer(runtime, "ops@example.com", admin=True)).user.id
    island = await _island(runtime, owner, 20)
    await _earn(runtime, island, owner, "5")

    skipped = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=MONDAY)
    assert (skipped.created, skipped.paid, skipped.skipped) == (0, 0, {owner: "identity_not_verified"})
    assert await _payouts(runtime) == []

    await _verify(runtime, owner, admin)
    paid = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=MONDAY)
    assert (paid.paid, paid.amount_paid, paid.skipped) == (1, Decimal(5), {})

    await _decide(runtime, owner, rules.REVOKE, admin)  # fraud: the gate closes again at once
    await _earn(runtime, island, owner, "3")
    week = MONDAY + dt.timedelta(days=7)
    again = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=week)
    assert (again.created, again.paid, again.skipped) == (0, 0, {owner: "identity_not_verified"})
    assert [r[3] for r in await _payouts(runtime)] == ["paid"]

    await _decide(runtime, owner, rules.APPROVE, admin)  # reinstated: the waiting earnings are paid
    reinstated = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=week)
    assert (reinstated.paid, reinstated.amount_paid) == (1, Decimal(3))


async def test_a_pending_payout_is_not_sent_to_an_owner_revoked_since(runtime: Runtime) -> None:
    owner = (await make_consumer(runtime, "owner@example.com", credits=Decimal(0))).user.id
    admin = (await make_consumer(runtime, "ops@example.com", admin=True)).user.id
    await _verify(runtime, owner, admin)
    await _earn(runtime, await _island(runtime, owner, 20), owner, "4")
    created = await payouts.create_pending_payouts(runtime.db, "virtual", MONDAY)  # then the batch crashed
    assert created == 1
    await _decide(runtime, owner, rules.REVOKE, admin)
    result = payouts.BatchResult()
    await payouts.pay_pending(runtime.db, VirtualProvider(), result)
    assert (result.paid, result.retry_later, result.skipped) == (0, 1, {owner: "identity_not_verified"})
    assert [r[3] for r in await _payouts(runtime)] == ["pending"]


async def test_the_verified_publisher_check_follows_the_status(runtime: Runtime) -> None:
    publisher = (await make_consumer(runtime, "pub@example.com")).user.id
    admin = (await make_consumer(runtime, "ops@example.com", admin=True)).user.id

    async def check() -> bool:
        async with runtime.db.session() as session:
            return await verification.is_verified(session, publisher)

    async with runtime.db.session() as session:
        assert await verification.is_verified(session, 999_999) is False
    assert await check() is False
    await verification.start(
        runtime.db, runtime.mailer, BuiltinProvider(), publisher, legal_name="P", country="DE"
    )
    assert await check() is False  # pending is not verified
    await _decide(runtime, publisher, rules.APPROVE, admin)
    assert await check() is True
    await _decide(runtime, publisher, rules.REVOKE, admin)
    assert await check() is False


@pytest_asyncio.fixture
async def quota_stack(database_url: str, nats_url: str) -> AsyncIterator[JobStack]:
    async with job_stack(database_url, nats_url, daily_spend_unverified=1_000.0) as s:
        await seed_cargos(s.runtime)
        yield s


async def test_the_unverified_spending_quota_lifts_on_verification_and_returns_on_revocation(
    quota_stack: JobStack,
) -> None:
    stack = quota_stack
    await make_island(stack.runtime)  # registered but not live: the jobs stay queued
    consumer = await make_consumer(stack.runtime)
    admin = await make_consumer(stack.runtime, "ops@example.com", admin=True)
    job = {**CHAT, "budget": 600}
    await submit(stack, consumer, job)
    refused = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json=job)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "daily_spend_limit"

    body = {"legal_name": "Consumer", "country": "FR"}
    assert (
        await stack.http.post("/api/v1/verification/start", headers=consumer.headers, json=body)
    ).status_code == 201
    still = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json=job)
    assert still.status_code == 429  # pending lifts nothing
    approve = f"/api/v1/admin/verifications/{consumer.user.id}/approve"
    assert (await stack.http.post(approve, headers=admin.headers)).status_code == 200
    await submit(stack, consumer, job)  # lifted at once: the very next submission passes
    await submit(stack, consumer, job)

    revoke = f"/api/v1/admin/verifications/{consumer.user.id}/revoke"
    revoked = await stack.http.post(revoke, headers=admin.headers, json={"reason": "fraud"})
    assert revoked.status_code == 200
    again = await stack.http.post("/api/v1/jobs", headers=consumer.headers, json=job)
    assert again.status_code == 429 and again.json()["error"]["code"] == "daily_spend_limit"
    async with stack.runtime.db.session() as session:
        charged = (
            await session.execute(
                text("SELECT count(*) FROM transactions WHERE user_id = :u AND type = 'charge'"),
                {"u": consumer.user.id},
            )
        ).scalar_one()
    assert charged == 3  # the refused submissions charged nothing
