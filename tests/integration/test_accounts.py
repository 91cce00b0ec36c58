"""Accounts: API keys at rest, magic links (15 min, single use, sign-up), sliding sessions, the outbox."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
from sqlalchemy import select, text, update

from coordinator.accounts import service as accounts
from coordinator.accounts.models import ApiKey, EmailOutbox, MagicLink, User, UserSession
from coordinator.repo.base import utcnow
from coordinator.runtime import Runtime
from tests.factories import make_consumer


async def test_api_keys_are_stored_as_hmac_digests_with_an_8_char_prefix(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime)
    async with runtime.db.session() as session:
        key = (await session.execute(select(ApiKey))).scalar_one()
    assert consumer.key.startswith("ak_") and len(consumer.key) >= 35
    assert key.prefix == consumer.key[:8]
    assert key.key_hash == accounts.digest("test-secret", consumer.key)
    assert consumer.key not in key.key_hash
    assert sorted(key.scopes) == ["read", "write"]
    # A key checked with another secret does not authenticate.
    async with runtime.db.session() as session:
        assert await accounts.authenticate_api_key(session, "other-secret", consumer.key) is None
        assert await accounts.authenticate_api_key(session, "test-secret", consumer.key) is not None


async def test_expired_keys_are_refused(runtime: Runtime) -> None:
    consumer = await make_consumer(runtime)
    async with runtime.db.transaction() as session:
        await session.execute(update(ApiKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    async with runtime.db.session() as session:
        assert await accounts.authenticate_api_key(session, "test-secret", consumer.key) is None


async def _request_link(runtime: Runtime, email: str) -> str:
    async with runtime.db.transaction() as session:
        return await accounts.request_magic_link(
            session, "test-secret", runtime.mailer, email, base_url="http://x", ttl_seconds=900
        )


async def test_a_magic_link_creates_the_account_once_and_works_once(runtime: Runtime) -> None:
    token = await _request_link(runtime, "New.User@Example.com")
    async with runtime.db.session() as session:
        mail = (await session.execute(select(EmailOutbox))).scalar_one()
        link = (await session.execute(select(MagicLink))).scalar_one()
    assert mail.recipient == "new.user@example.com" and f"/auth/magic/{token}" in mail.body
    assert (link.expires_at - link.created_at) <= timedelta(minutes=15, seconds=1)
    assert token not in link.token_hash
    async with runtime.db.transaction() as session:
        user, session_token = await accounts.consume_magic_link(
            session, "test-secret", token, signup_credits=Decimal(10_000), session_ttl_days=30
        )
    assert user.email == "new.user@example.com" and user.credits == 10_000
    async with runtime.db.transaction() as session:
        try:
            await accounts.consume_magic_link(
                session, "test-secret", token, signup_credits=Decimal(10_000), session_ttl_days=30
            )
            raise AssertionError("a magic link must work only once")
        except accounts.NotFound:
            pass
    # A second link for the same address signs into the same account without another grant.
    second = await _request_link(runtime, "new.user@example.com")
    async with runtime.db.transaction() as session:
        again, _ = await accounts.consume_magic_link(
            session, "test-secret", second, signup_credits=Decimal(10_000), session_ttl_days=30
        )
    assert again.id == user.id
    async with runtime.db.session() as session:
        assert (await session.execute(select(User))).scalars().all()[0].credits == 10_000
        assert session_token


async def test_an_expired_magic_link_is_refused(runtime: Runtime) -> None:
    token = await _request_link(runtime, "late@example.com")
    async with runtime.db.transaction() as session:
        await session.execute(update(MagicLink).values(expires_at=utcnow() - timedelta(seconds=1)))
    async with runtime.db.transaction() as session:
        try:
            await accounts.consume_magic_link(
                session, "test-secret", token, signup_credits=Decimal(0), session_ttl_days=30
            )
            raise AssertionError("expired link accepted")
        except accounts.NotFound:
            pass


async def test_sessions_slide_and_sign_in_over_http(runtime: Runtime, http: httpx.AsyncClient) -> None:
    sent = await http.post("/api/v1/auth/magic-link", json={"email": "web@example.com"})
    assert sent.status_code == 200
    async with runtime.db.session() as session:
        body = (await session.execute(select(EmailOutbox.body))).scalar_one()
    token = body.split("/auth/magic/")[1].split()[0]
    landing = await http.get(f"/auth/magic/{token}")
    assert landing.status_code == 303 and landing.headers["location"] == "/chat"
    cookie = landing.cookies.get("coordinator_session")
    assert cookie
    account = await http.get("/api/v1/account", cookies={"coordinator_session": cookie})
    assert account.status_code == 200 and account.json()["data"]["email"] == "web@example.com"
    # Each use pushes the expiry forward (sliding): shorten it, use it, and it is 30 days again.
    async with runtime.db.transaction() as session:
        await session.execute(update(UserSession).values(expires_at=utcnow() + timedelta(hours=1)))
    await http.get("/api/v1/account", cookies={"coordinator_session": cookie})
    async with runtime.db.session() as session:
        expires = (await session.execute(select(UserSession.expires_at))).scalar_one()
    assert expires > utcnow() + timedelta(days=29)
    out = await http.delete("/api/v1/auth/session", cookies={"coordinator_session": cookie})
    assert out.status_code == 200
    after = await http.get("/api/v1/account", cookies={"coordinator_session": cookie})
    assert after.status_code == 401


async def test_auth_cleanup_deletes_only_expired_tokens(runtime: Runtime) -> None:
    await _request_link(runtime, "a@example.com")
    await _request_link(runtime, "b@example.com")
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "UPDATE magic_links SET expires_at = now() - interval '1 minute' "
                "WHERE email = 'a@example.com'"
            )
        )
    async with runtime.db.transaction() as session:
        links, sessions = await accounts.delete_expired_auth_tokens(session)
    assert (links, sessions) == (1, 0)
    async with runtime.db.session() as session:
        assert (await session.execute(select(MagicLink.email))).scalars().all() == ["b@example.com"]
