"""The weekly payout batch against PostgreSQL: who is paid, once per period, across crashes and retries;
and the Stripe Connect provider's requests, checked against a local fake of Stripe's HTTP API."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from coordinator.billing import ledger, payouts, settlement
from coordinator.billing.providers import PayoutError, PayoutRequest, StripeConnectProvider, VirtualProvider
from coordinator.devstack import free_port
from coordinator.runtime import Runtime
from tests.factories import make_consumer

MONDAY = dt.date(2026, 11, 23)


async def _owner(runtime: Runtime, email: str, *, verified: bool = True) -> int:
    owner = await make_consumer(runtime, email, credits=Decimal(0))
    status = "verified" if verified else "unverified"
    async with runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE users SET verification_status = :s WHERE id = :u"), {"s": status, "u": owner.user.id}
        )
    return owner.user.id


async def _island(runtime: Runtime, owner_id: int, karma: int, region: str | None = None) -> uuid.UUID:
    host_id = uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO hosts (id, owner_id, karma, region) VALUES (:h, :o, :k, :r)"),
            {"h": host_id, "o": owner_id, "k": karma, "r": region},
        )
    return host_id


async def _earn(runtime: Runtime, host_id: uuid.UUID, owner_id: int, amount: str) -> None:
    """A successful job on the Island, settled through the real settlement path."""
    consumer = await make_consumer(runtime, f"{uuid.uuid4().hex}@example.com", credits=Decimal(1000))
    job_id = uuid.uuid4()
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO workloads (slug, name) VALUES ('p', 'p') ON CONFLICT DO NOTHING")
        )
        await session.execute(
            text(
                "INSERT INTO jobs (id, user_id, workload_id, input, budget, state) "
                "SELECT :j, :u, id, '{}'::jsonb, 100, 'succeeded' FROM workloads WHERE slug = 'p'"
            ),
            {"j": job_id, "u": consumer.user.id},
        )
        await ledger.debit(
            session, consumer.user.id, Decimal(100), job_id=job_id, idempotency_key=f"charge:{job_id}"
        )
        await settlement.settle_success(
            session,
            job_id=job_id,
            user_id=consumer.user.id,
            budget=Decimal(100),
            clearing_price=Decimal(amount),
            host_id=host_id,
            host_owner_id=owner_id,
        )


async def _payouts(runtime: Runtime) -> list[tuple[Any, ...]]:
    async with runtime.db.session() as session:
        rows = await session.execute(
            text("SELECT owner_id, period_start, amount, status, provider_ref FROM payouts ORDER BY id")
        )
        return [tuple(r) for r in rows.all()]


async def test_only_verified_owners_of_monetizable_islands_are_paid(runtime: Runtime) -> None:
    paid = await _owner(runtime, "paid@example.com")
    unverified = await _owner(runtime, "unverified@example.com", verified=False)
    low_karma = await _owner(runtime, "low@example.com")
    metro = await _owner(runtime, "metro@example.com")
    async with runtime.db.transaction() as session:
        await session.execute(
            text("INSERT INTO metro_settings (region, monetization_threshold) VALUES ('x', 5)")
        )
    await _earn(runtime, await _island(runtime, paid, 10), paid, "4")
    await _earn(runtime, await _island(runtime, paid, 10), paid, "2.5")
    await _earn(runtime, await _island(runtime, paid, 3), paid, "7")  # this Island is not payable yet
    await _earn(runtime, await _island(runtime, unverified, 50), unverified, "9")
    await _earn(runtime, await _island(runtime, low_karma, 9), low_karma, "9")
    await _earn(runtime, await _island(runtime, metro, 5, region="x"), metro, "3")
    result = await payouts.run_payout_batch(
        runtime.db, VirtualProvider(), today=MONDAY + dt.timedelta(days=6)
    )
    assert (result.created, result.paid, result.amount_paid) == (2, 2, Decimal("9.5"))
    rows = await _payouts(runtime)
    assert {(r[0], r[2], r[3]) for r in rows} == {(paid, Decimal("6.5"), "paid"), (metro, Decimal(3), "paid")}
    assert all(r[1] == MONDAY for r in rows)


async def test_a_repeated_batch_never_pays_twice(runtime: Runtime) -> None:
    owner = await _owner(runtime, "o@example.com")
    island = await _island(runtime, owner, 12)
    await _earn(runtime, island, owner, "5")
    first = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=MONDAY)
    await _earn(runtime, island, owner, "1")  # earned after this period's payout
    again = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=MONDAY + dt.timedelta(days=2))
    assert (first.paid, again.created, again.paid) == (1, 0, 0)
    later = await payouts.run_payout_batch(runtime.db, VirtualProvider(), today=MONDAY + dt.timedelta(days=7))
    assert later.paid == 1
    assert [(r[1], r[2]) for r in await _payouts(runtime)] == [
        (MONDAY, Decimal(5)),
        (MONDAY + dt.timedelta(days=7), Decimal(1)),
    ]


class FakeTransfers(VirtualProvider):
    """A provider that dedupes by idempotency key like Stripe, and can die right after paying."""

    def __init__(self) -> None:
        self.transfers: dict[str, Decimal] = {}
        self.calls: list[str] = []
        self.crash_after_paying = False
        self.refuse: PayoutError | None = None

    async def pay(self, request: PayoutRequest) -> str:
        self.calls.append(request.idempotency_key)
        if self.refuse is not None:
            raise self.refuse
        self.transfers.setdefault(request.idempotency_key, request.amount)
        if self.crash_after_paying:
            raise SystemExit("worker killed after the provider paid")
        return f"tr_{request.idempotency_key}"


async def test_a_batch_killed_after_paying_resumes_without_paying_twice(runtime: Runtime) -> None:
    owner = await _owner(runtime, "o@example.com")
    await _earn(runtime, await _island(runtime, owner, 10), owner, "8")
    provider = FakeTransfers()
    provider.crash_after_paying = True
    with pytest.raises(SystemExit):
        await payouts.run_payout_batch(runtime.db, provider, today=MONDAY)
    assert [r[3] for r in await _payouts(runtime)] == ["pending"]
    provider.crash_after_paying = False
    result = await payouts.run_payout_batch(runtime.db, provider, today=MONDAY + dt.timedelta(days=1))
    assert (result.created, result.paid) == (0, 1)
    [(_, _, amount, status, ref)] = await _payouts(runtime)
    assert (amount, status) == (Decimal(8), "paid")
    assert len(provider.calls) == 2 and len(set(provider.calls)) == 1  # same key both times
    assert provider.transfers == {provider.calls[0]: Decimal(8)} and ref == f"tr_{provider.calls[0]}"


async def test_refused_payout_fails_and_releases_earnings_transient_errors_retry(runtime: Runtime) -> None:
    owner = await _owner(runtime, "o@example.com")
    await _earn(runtime, await _island(runtime, owner, 10), owner, "8")
    provider = FakeTransfers()
    provider.refuse = PayoutError("network down")
    result = await payouts.run_payout_batch(runtime.db, provider, today=MONDAY)
    assert (result.retry_later, [r[3] for r in await _payouts(runtime)]) == (1, ["pending"])
    provider.refuse = PayoutError("account closed", permanent=True)
    result = await payouts.run_payout_batch(runtime.db, provider, today=MONDAY)
    assert result.failed == 1 and [r[3] for r in await _payouts(runtime)] == ["failed"]
    provider.refuse = None  # next period, the released earnings are paid
    result = await payouts.run_payout_batch(runtime.db, provider, today=MONDAY + dt.timedelta(days=7))
    assert (result.paid, result.amount_paid) == (1, Decimal(8))


# --- Stripe Connect: contract test against a local fake of Stripe's HTTP API (not of our infrastructure) ---


class FakeStripe:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], str | None, str | None]] = []
        self.by_key: dict[str, dict[str, Any]] = {}

    async def transfers(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        key = request.headers.get("idempotency-key")
        self.requests.append((form, key, request.headers.get("authorization")))
        if form.get("destination") == "acct_closed":
            error = {"type": "invalid_request_error", "message": "No such destination: 'acct_closed'"}
            return JSONResponse({"error": error}, status_code=400)
        if key not in self.by_key:
            self.by_key[key or ""] = {
                "id": f"tr_{len(self.by_key) + 1}",
                "object": "transfer",
                "amount": int(form["amount"]),
                "currency": form["currency"],
                "destination": form["destination"],
            }
        return JSONResponse(self.by_key[key or ""])


@pytest_asyncio.fixture
async def fake_stripe() -> AsyncIterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    app = Starlette(routes=[Route("/v1/transfers", fake.transfers, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # up to 5 s for uvicorn to bind
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_stripe_connect_sends_an_idempotent_transfer_in_cents(
    runtime: Runtime, fake_stripe: tuple[FakeStripe, str]
) -> None:
    fake, base = fake_stripe
    owner = await _owner(runtime, "o@example.com")
    closed = await _owner(runtime, "closed@example.com")
    await payouts.set_payout_account(runtime.db, owner, "stripe", "acct_123")
    await payouts.set_payout_account(runtime.db, closed, "stripe", "acct_closed")
    await _earn(runtime, await _island(runtime, owner, 10), owner, "12.75")
    await _earn(runtime, await _island(runtime, closed, 10), closed, "3")
    provider = StripeConnectProvider("sk_test_fake", api_base=base)
    result = await payouts.run_payout_batch(runtime.db, provider, today=MONDAY)
    assert (result.paid, result.failed) == (1, 1)
    rows = {r[0]: r for r in await _payouts(runtime)}
    assert rows[owner][3:] == ("paid", "tr_1")
    assert rows[closed][3] == "failed"
    form, key, auth = fake.requests[0]
    assert form["amount"] == "12" and form["currency"] == "usd" and form["destination"] == "acct_123"
    assert key is not None and key.startswith("payout-") and auth == "Bearer sk_test_fake"
    # a retry with the same key gets the same transfer back
    same = await provider.pay(PayoutRequest(int(key.split("-")[1]), owner, Decimal("12.75"), "acct_123", key))
    assert same == "tr_1"
