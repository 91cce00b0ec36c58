"""Stripe Identity end to end: the coordinator's HTTP API against a local fake of Stripe's API, webhooks
signed like Stripe's (forged, stale, replayed and duplicate deliveries), and what is kept of an identity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import select, text

from coordinator.accounts.models import EmailOutbox
from coordinator.app import HttpChild
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.verification.models import StripeIdentityEvent, Verification
from tests.conftest import make_settings
from tests.factories import Consumer, make_consumer
from tests.stripe_identity_fake import (
    SENSITIVE,
    WEBHOOK_SECRET,
    FakeStripeIdentity,
    WebhookSender,
    fake_stripe_identity,
)


@dataclass
class StripeStack:
    runtime: Runtime
    http: httpx.AsyncClient
    fake: FakeStripeIdentity
    webhooks: WebhookSender
    user: Consumer
    admin: Consumer


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[StripeStack]:
    async with fake_stripe_identity() as (fake, base):
        settings = make_settings(
            database_url,
            verification_provider="stripe",
            stripe_api_key="sk_test_identity",
            stripe_api_base=base,
            stripe_identity_webhook_secret=WEBHOOK_SECRET,
            public_url=None,
        )
        runtime = Runtime.from_settings(settings)
        supervisor = Supervisor([HttpChild(runtime)])
        await supervisor.start()
        try:
            async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as http:
                user = await make_consumer(runtime, "ada@example.com")
                admin = await make_consumer(runtime, "ops@example.com", admin=True)
                yield StripeStack(runtime, http, fake, WebhookSender(http), user, admin)
        finally:
            await supervisor.stop()
            await runtime.db.dispose()


async def _status(stack: StripeStack) -> dict[str, Any]:
    response = await stack.http.get("/api/v1/verification/status", headers=stack.user.headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _start(stack: StripeStack) -> dict[str, Any]:
    response = await stack.http.post("/api/v1/verification/start", headers=stack.user.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _mail_subjects(stack: StripeStack) -> list[str]:
    async with stack.runtime.db.session() as session:
        rows = await session.execute(
            select(EmailOutbox.subject)
            .where(EmailOutbox.recipient == stack.user.user.email)
            .order_by(EmailOutbox.id)
        )
        return list(rows.scalars())


async def _applied_events(stack: StripeStack) -> list[tuple[str, str]]:
    async with stack.runtime.db.session() as session:
        rows = await session.execute(
            select(StripeIdentityEvent.event_id, StripeIdentityEvent.outcome).order_by(
                StripeIdentityEvent.received_at, StripeIdentityEvent.event_id
            )
        )
        return [(r[0], r[1]) for r in rows.all()]


async def _status_changes(stack: StripeStack) -> list[tuple[str, str, str]]:
    async with stack.runtime.db.session() as session:
        rows = await session.execute(
            text(
                "SELECT from_status, to_status, actor FROM verification_events WHERE user_id = :u ORDER BY id"
            ),
            {"u": stack.user.user.id},
        )
        return [(r[0], r[1], r[2]) for r in rows.all()]


async def test_start_creates_a_session_and_a_signed_webhook_verifies_the_user(stack: StripeStack) -> None:
    assert (await _status(stack))["status"] == "unverified"
    started = await _start(stack)
    assert started["status"] == "pending" and started["provider"] == "stripe"
    assert started["provider_ref"] == "vs_1"
    assert started["client_secret"] == "vs_1_secret_abc"
    assert started["url"] == "https://verify.stripe.test/start/vs_1"
    [(form, key, auth)] = stack.fake.creates
    assert form["type"] == "document" and form["metadata[coordinator_user_id]"] == str(stack.user.user.id)
    assert auth == "Bearer sk_test_identity" and key is not None and key.startswith("verification-start-")

    processing = await stack.webhooks.send("processing", stack.fake.event_object("vs_1"))
    assert processing.status_code == 200 and processing.json()["data"]["outcome"] == "recorded"
    assert (await _status(stack))["status"] == "pending"

    verified = await stack.webhooks.send("verified", stack.fake.verify("vs_1"))
    assert verified.status_code == 200, verified.text
    assert verified.json()["data"]["outcome"] == "applied"
    status = await _status(stack)
    assert (status["status"], status["verified_name"], status["country"]) == (
        "verified",
        "Ada Lovelace",
        "GB",
    )
    assert status["can_start"] is False
    # the name and country came from the session retrieved with its outputs and report expanded
    assert stack.fake.retrieves == [("vs_1", ["verified_outputs", "last_verification_report"])]
    assert await _status_changes(stack) == [
        ("unverified", "pending", "user"),
        ("pending", "verified", "provider"),
    ]
    assert await _mail_subjects(stack) == ["We are checking your identity", "Your identity is verified"]
    again = await stack.http.post("/api/v1/verification/start", headers=stack.user.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "verification_verified"


async def test_only_name_country_status_and_reference_are_stored(stack: StripeStack) -> None:
    await _start(stack)
    response = await stack.webhooks.send("verified", stack.fake.verify("vs_1"))
    assert response.json()["data"]["outcome"] == "applied"
    columns = set(Verification.__table__.columns.keys())
    assert columns == {
        "id",
        "user_id",
        "status",
        "provider",
        "provider_ref",
        "verified_name",
        "country",
        "reviewer_id",
        "reason",
        "decided_at",
        "created_at",
        "updated_at",
    }
    # Nothing of the document, selfie, birth date, ID number or address reaches any table.
    async with stack.runtime.db.session() as session:
        tables = ("verifications", "verification_events", "stripe_identity_events", "users", "email_outbox")
        stored = ""
        for table in tables:
            rows = await session.execute(text(f"SELECT to_jsonb(t)::text FROM {table} t"))
            stored += "\n".join(rows.scalars())
    assert "Ada Lovelace" in stored and "vs_1" in stored
    for secret in (
        SENSITIVE["id_number"],
        SENSITIVE["document_number"],
        SENSITIVE["selfie"],
        *SENSITIVE["files"],
        SENSITIVE["address"]["line1"],
        SENSITIVE["address"]["postal_code"],
        "1815",
        "vs_1_secret_abc",
    ):
        assert secret not in stored, secret


async def test_forged_stale_and_unsigned_webhooks_are_refused_and_change_nothing(stack: StripeStack) -> None:
    await _start(stack)
    session = stack.fake.verify("vs_1")
    payload = stack.webhooks.event("verified", session, event_id="evt_attack")
    forged = stack.webhooks.sign(payload, secret="whsec_guessed")
    genuine = stack.webhooks.sign(payload)
    tampered_body = json.loads(payload)
    tampered_body["data"]["object"]["metadata"]["coordinator_user_id"] = str(stack.admin.user.id)
    tampered = type(genuine)(json.dumps(tampered_body).encode(), genuine.signature)
    stale = stack.webhooks.sign(
        payload, age=stack.runtime.settings.stripe_identity_webhook_tolerance_seconds + 60
    )
    unsigned = type(genuine)(payload, None)
    garbage = type(genuine)(payload, "t=abc,v1=zz")
    for delivery in (forged, tampered, stale, unsigned, garbage):
        response = await stack.webhooks.deliver(delivery)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
    assert (await _status(stack))["status"] == "pending"
    assert await _applied_events(stack) == []
    assert await _mail_subjects(stack) == ["We are checking your identity"]
    assert stack.fake.retrieves == []  # a refused webhook does not even reach Stripe
    # the genuine delivery of the same event still works afterwards
    ok = await stack.webhooks.deliver(genuine)
    assert ok.json()["data"] == {"event_id": "evt_attack", "outcome": "applied"}
    assert (await _status(stack))["status"] == "verified"


async def test_a_duplicate_event_is_applied_once_and_a_replay_after_revocation_changes_nothing(
    stack: StripeStack,
) -> None:
    await _start(stack)
    payload = stack.webhooks.event("verified", stack.fake.verify("vs_1"), event_id="evt_verified")
    first = stack.webhooks.sign(payload)
    # Delivered five times at once (Stripe retries overlap): exactly one delivery applies it.
    answers = await asyncio.gather(*(stack.webhooks.deliver(first) for _ in range(5)))
    assert sorted(a.json()["data"]["outcome"] for a in answers) == ["applied", *["duplicate"] * 4]
    # Stripe redelivers the same event (re-signed with a new timestamp): applied once.
    redelivered = await stack.webhooks.deliver(stack.webhooks.sign(payload))
    assert redelivered.status_code == 200 and redelivered.json()["data"]["outcome"] == "duplicate"
    assert await _applied_events(stack) == [("evt_verified", "applied")]
    assert len(await _mail_subjects(stack)) == 2

    revoked = await stack.http.post(
        f"/api/v1/admin/verifications/{stack.user.user.id}/revoke",
        headers=stack.admin.headers,
        json={"reason": "Document reported stolen"},
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["data"]["status"] == "revoked"
    # An attacker replays the captured delivery, then an old session event arrives late: neither verifies.
    replay = await stack.webhooks.deliver(first)
    assert replay.status_code == 200 and replay.json()["data"]["outcome"] == "duplicate"
    late = await stack.webhooks.send("verified", stack.fake.event_object("vs_1"))
    assert late.json()["data"]["outcome"] == "stale"
    status = await _status(stack)
    assert (status["status"], status["reason"]) == ("revoked", "Document reported stolen")
    assert await _status_changes(stack) == [
        ("unverified", "pending", "user"),
        ("pending", "verified", "provider"),
        ("verified", "revoked", "admin"),
    ]
    # a revoked user cannot simply start again at Stripe
    restart = await stack.http.post("/api/v1/verification/start", headers=stack.user.headers)
    assert restart.status_code == 409 and restart.json()["error"]["code"] == "verification_revoked"


async def test_requires_input_rejects_with_the_reason_and_a_retry_opens_a_new_session(
    stack: StripeStack,
) -> None:
    await _start(stack)
    session = stack.fake.require_input("vs_1", "document_expired", "The document is expired.")
    response = await stack.webhooks.send("requires_input", session)
    assert response.json()["data"]["outcome"] == "applied"
    status = await _status(stack)
    assert (status["status"], status["reason"], status["can_start"]) == (
        "rejected",
        "The document is expired.",
        True,
    )
    async with stack.runtime.db.session() as db:
        body = (
            await db.execute(select(EmailOutbox.body).order_by(EmailOutbox.id.desc()).limit(1))
        ).scalar_one()
    assert "The document is expired." in body

    retry = await _start(stack)
    assert (retry["status"], retry["provider_ref"], retry["reason"]) == ("pending", "vs_2", None)
    # the first session, verified late, no longer counts; the new one does
    stale = await stack.webhooks.send("verified", stack.fake.verify("vs_1", first_name="Someone"))
    assert stale.json()["data"]["outcome"] == "stale"
    assert (await _status(stack))["status"] == "pending"
    fresh = await stack.webhooks.send("verified", stack.fake.verify("vs_2"))
    assert fresh.json()["data"]["outcome"] == "applied"
    status = await _status(stack)
    assert (status["status"], status["verified_name"], status["provider_ref"]) == (
        "verified",
        "Ada Lovelace",
        "vs_2",
    )


async def test_an_event_for_a_session_not_yet_recorded_is_retried_not_lost(stack: StripeStack) -> None:
    session = {
        "id": "vs_unknown",
        "object": "identity.verification_session",
        "metadata": {"coordinator_user_id": str(stack.user.user.id)},
        "status": "processing",
    }
    response = await stack.webhooks.send("processing", session, event_id="evt_early")
    assert response.status_code == 409  # Stripe delivers it again later
    assert response.json()["error"]["code"] == "unknown_verification_session"
    assert await _applied_events(stack) == []
    # sessions other integrations created on the same Stripe account are acknowledged and ignored
    foreign = await stack.webhooks.send("verified", {"id": "vs_other", "metadata": {}})
    assert foreign.status_code == 200 and foreign.json()["data"]["outcome"] == "not_ours"


async def test_a_refused_session_writes_nothing_and_the_user_can_try_again(stack: StripeStack) -> None:
    stack.fake.refuse_create = True
    response = await stack.http.post("/api/v1/verification/start", headers=stack.user.headers)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "verification_provider_error"
    assert "not activated" in response.json()["error"]["message"]
    assert (await _status(stack))["status"] == "unverified"
    assert await _status_changes(stack) == [] and await _mail_subjects(stack) == []
    async with stack.runtime.db.session() as session:
        assert (await session.execute(select(Verification))).first() is None
    stack.fake.refuse_create = False
    assert (await _start(stack))["status"] == "pending"
