"""The web pages over HTTP (no browser): CSRF on every form, cookie flags, ownership and roles checked
on the server, bans, operator grants, ledger filters, and the server-side SVG charts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest_asyncio
from sqlalchemy import func, select, text

from coordinator.accounts import service as accounts
from coordinator.accounts.models import ApiKey, User, UserSession
from coordinator.app import HttpChild
from coordinator.billing.models import Transaction
from coordinator.jobs.models import Job
from coordinator.runtime import Runtime
from coordinator.supervisor import Supervisor
from coordinator.web.pages.charts import bar_chart, line_chart
from tests.conftest import make_settings
from tests.stream_support import Stack, finish, running_job, stream_stack

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@dataclass
class Browserish:
    """An httpx client holding a signed-in session cookie and the CSRF token of the last page read."""

    http: httpx.AsyncClient
    user: User
    csrf: str = ""

    async def page(self, path: str) -> httpx.Response:
        response = await self.http.get(path)
        if found := CSRF.search(response.text):
            self.csrf = found.group(1)
        return response

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> httpx.Response:
        body = {**(data or {}), **({"csrf_token": self.csrf} if csrf else {})}
        return await self.http.post(path, data=body)


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as running:
        yield running


async def signed_in(stack: Stack, email: str, *, admin: bool = False) -> Browserish:
    """A user with a session opened by the accounts service (what the magic link does), and a CSRF seed
    from their first page."""
    runtime = stack.runtime
    async with runtime.db.transaction() as session:
        user = await accounts.get_user_by_email(session, email)
        if user is None:
            user = await accounts.create_user(session, email, credits=Decimal(1000), admin=admin)
        token = await accounts.open_session(session, runtime.settings.secret_key, user, ttl_days=1)
    http = httpx.AsyncClient(base_url=runtime.base_url, cookies={"coordinator_session": token}, timeout=30)
    client = Browserish(http, user)
    assert (await client.page("/settings")).status_code == 200
    return client


@pytest_asyncio.fixture
async def alice(stack: Stack) -> AsyncIterator[Browserish]:
    client = await signed_in(stack, "alice@example.com")
    yield client
    await client.http.aclose()


@pytest_asyncio.fixture
async def bob(stack: Stack) -> AsyncIterator[Browserish]:
    client = await signed_in(stack, "bob@example.com")
    yield client
    await client.http.aclose()


async def count(stack: Stack, model: type, *where: object) -> int:
    async with stack.runtime.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# ---------------------------------------------------------------- CSRF


async def test_every_form_refuses_a_post_without_the_csrf_token(stack: Stack, alice: Browserish) -> None:
    forms = [
        ("/chat", {"prompt": "hello"}),
        ("/image", {"prompt": "a cat"}),
        ("/settings/api-keys", {"name": "k", "scopes": "read"}),
        ("/settings/islands/pair", {"code": "ABC123"}),
        ("/auth/logout", {}),
        ("/auth/login", {"email": "x@example.com"}),
    ]
    jobs_before, keys_before = await count(stack, Job), await count(stack, ApiKey)
    for path, data in forms:
        missing = await alice.post(path, data, csrf=False)
        assert missing.status_code == 403, path
        forged = await alice.http.post(path, data={**data, "csrf_token": "0" * 64})
        assert forged.status_code == 403, path
    # Nothing was written, and the session still works (sign-out was refused too).
    assert await count(stack, Job) == jobs_before and await count(stack, ApiKey) == keys_before
    assert (await alice.page("/settings")).status_code == 200


async def test_a_token_from_another_browser_is_refused(
    stack: Stack, alice: Browserish, bob: Browserish
) -> None:
    # Bob's token with Alice's cookies: the token is bound to the browser's own seed cookie.
    stolen = await alice.http.post(
        "/settings/api-keys", data={"name": "k", "scopes": "read", "csrf_token": bob.csrf}
    )
    assert stolen.status_code == 403
    ok = await alice.post("/settings/api-keys", {"name": "k", "scopes": "read"})
    assert ok.status_code == 201 and "ak_" in ok.text


async def test_htmx_requests_carry_the_token_in_a_header(stack: Stack, alice: Browserish) -> None:
    ref = await running_job(stack)
    async with stack.runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE jobs SET user_id = :u WHERE id = :id"), {"u": alice.user.id, "id": ref.job_id}
        )
    refused = await alice.http.post(f"/jobs/{ref.job_id}/cancel", headers={"HX-Request": "true"})
    assert refused.status_code == 403
    done = await alice.http.post(
        f"/jobs/{ref.job_id}/cancel", headers={"HX-Request": "true", "X-CSRF-Token": alice.csrf}
    )
    assert done.status_code == 204
    async with stack.runtime.db.session() as session:
        assert (await session.get(Job, ref.job_id)).state == "cancelled"  # type: ignore[union-attr]


# ---------------------------------------------------------------- sessions and cookies


async def test_sign_in_out_and_cookie_flags_in_development(stack: Stack) -> None:
    runtime = stack.runtime
    async with httpx.AsyncClient(base_url=runtime.base_url) as http:
        login = await http.get("/auth/login")
        token = CSRF.search(login.text).group(1)  # type: ignore[union-attr]
        sent = await http.post("/auth/login", data={"email": "New.Person@Example.com", "csrf_token": token})
        assert sent.status_code == 200 and "new.person@example.com" in sent.text
        async with runtime.db.session() as session:
            body = await session.scalar(text("SELECT body FROM email_outbox ORDER BY id DESC LIMIT 1"))
        magic = re.search(r"/auth/magic/(\S+)", body).group(1)  # type: ignore[union-attr,arg-type]
        landing = await http.get(f"/auth/magic/{magic}")
        assert landing.status_code == 303 and landing.headers["location"] == "/chat"
        cookie = landing.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
        again = await http.get(f"/auth/magic/{magic}")
        assert again.status_code == 404  # a link works once
        chat = await http.get("/chat")
        assert chat.status_code == 200
        out = await http.post("/auth/logout", data={"csrf_token": CSRF.search(chat.text).group(1)})  # type: ignore[union-attr]
        assert out.status_code == 303
        assert await count(stack, UserSession) == 0
        assert (await http.get("/chat")).status_code == 303  # signed out: back to the login page


async def test_session_cookie_is_secure_outside_development(database_url: str) -> None:
    runtime = Runtime.from_settings(make_settings(database_url, env="production", secret_key="s" * 40))
    supervisor = Supervisor([HttpChild(runtime)])
    await supervisor.start()
    try:
        async with runtime.db.transaction() as session:
            token = await accounts.request_magic_link(
                session,
                runtime.settings.secret_key,
                runtime.mailer,
                "prod@example.com",
                base_url=runtime.base_url,
                ttl_seconds=60,
            )
        async with httpx.AsyncClient(base_url=runtime.base_url) as http:
            landing = await http.get(f"/auth/magic/{token}")
            assert landing.status_code == 303
            assert "secure" in landing.headers["set-cookie"].lower()
            login = await http.get("/auth/login")
            assert "secure" in login.headers["set-cookie"].lower()  # the CSRF seed cookie too
    finally:
        await supervisor.stop()
        await runtime.db.dispose()


async def test_pages_send_a_signed_out_browser_to_the_login_page(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.runtime.base_url) as http:
        for path in (
            "/chat",
            "/image",
            "/jobs",
            "/credits",
            "/settings",
            "/settings/api-keys",
            "/admin/fleet",
        ):
            response = await http.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/auth/login", path
        # A bearer key does not sign a browser in.
        bearer = {"Authorization": f"Bearer {stack.consumer.key}"}
        assert (await http.get("/chat", headers=bearer)).status_code == 303


# ---------------------------------------------------------------- ownership and roles


async def test_another_users_job_is_not_found_on_every_job_page(
    stack: Stack, alice: Browserish, bob: Browserish
) -> None:
    ref = await running_job(stack, "sdxl", {"prompt": "x", "seed": 3})
    async with stack.runtime.db.transaction() as session:
        await session.execute(
            text("UPDATE jobs SET user_id = :u WHERE id = :id"), {"u": alice.user.id, "id": ref.job_id}
        )
    assert (await alice.page(f"/jobs/{ref.job_id}")).status_code == 200
    for path in (
        f"/jobs/{ref.job_id}",
        f"/jobs/{ref.job_id}/live",
        f"/jobs/{ref.job_id}/image",
        "/jobs/not-a-uuid",
    ):
        assert (await bob.page(path)).status_code == 404, path
    cancel = await bob.post(f"/jobs/{ref.job_id}/cancel")
    assert cancel.status_code == 404
    async with stack.runtime.db.session() as session:
        assert (await session.get(Job, ref.job_id)).state == "running"  # type: ignore[union-attr]
    # Bob's job list does not show it; an operator can read it.
    assert str(ref.job_id) not in (await bob.page("/jobs")).text
    admin = await signed_in(stack, "root@example.com", admin=True)
    try:
        assert (await admin.page(f"/jobs/{ref.job_id}")).status_code == 200
        assert (await admin.page(f"/admin/jobs/{ref.job_id}")).status_code == 200
    finally:
        await admin.http.aclose()


async def test_non_admins_are_refused_every_operator_action(stack: Stack, alice: Browserish) -> None:
    pages = [
        "/admin",
        "/admin/fleet",
        "/admin/fleet/table",
        "/admin/jobs",
        "/admin/jobs/counts",
        "/admin/users",
    ]
    for path in pages:
        assert (await alice.page(path)).status_code == 403, path
    host = stack.host_id
    actions = [
        (f"/admin/fleet/{host}/suspend", {}),
        (f"/admin/fleet/{host}/approve", {}),
        (f"/admin/users/{alice.user.id}/grant", {"amount": "1000", "nonce": "n" * 20}),
        (f"/admin/users/{alice.user.id}/ban", {}),
    ]
    for path, data in actions:
        assert (await alice.post(path, data)).status_code == 403, path
    assert (
        await count(stack, Transaction, Transaction.type == "grant", Transaction.user_id == alice.user.id)
        == 1
    )
    async with stack.runtime.db.session() as session:
        assert await session.scalar(text("SELECT status FROM hosts WHERE id = :id"), {"id": host}) == "online"


async def test_an_island_of_someone_else_cannot_be_suspended_by_its_non_owner(
    stack: Stack, alice: Browserish
) -> None:
    refused = await alice.post(f"/settings/islands/{stack.host_id}/suspend")
    assert refused.status_code == 404


# ---------------------------------------------------------------- operators: grants and bans


async def test_admin_grants_credits_once_per_form_and_bans(stack: Stack, alice: Browserish) -> None:
    admin = await signed_in(stack, "root@example.com", admin=True)
    try:
        users = await admin.page("/admin/users")
        nonce = re.search(r'name="nonce" value="([^"]+)"', users.text).group(1)  # type: ignore[union-attr]
        form = {"amount": "250.5", "reason": "beta tester", "nonce": nonce}
        for _ in range(2):  # a double click: the same form twice
            assert (await admin.post(f"/admin/users/{alice.user.id}/grant", form)).status_code == 303
        async with stack.runtime.db.session() as session:
            credits = await session.scalar(select(User.credits).where(User.id == alice.user.id))
        assert credits == Decimal("1250.5")
        bad = await admin.post(
            f"/admin/users/{alice.user.id}/grant", {**form, "amount": "-5", "nonce": "m" * 20}
        )
        assert bad.status_code == 422
        assert (await admin.post(f"/admin/users/{admin.user.id}/ban")).status_code == 422

        key = (await alice.post("/settings/api-keys", {"name": "k", "scopes": "read"})).text
        secret = re.search(r"(ak_[A-Za-z0-9_\-]+)", key).group(1)  # type: ignore[union-attr]
        assert (await admin.post(f"/admin/users/{alice.user.id}/ban", {"reason": "abuse"})).status_code == 303
        assert (await alice.http.get("/chat")).status_code == 303  # the session no longer signs in
        async with httpx.AsyncClient(base_url=stack.runtime.base_url) as http:
            bearer = {"Authorization": f"Bearer {secret}"}
            assert (await http.get("/api/v1/account", headers=bearer)).status_code == 401
            assert (await admin.post(f"/admin/users/{alice.user.id}/unban")).status_code == 303
            assert (await http.get("/api/v1/account", headers=bearer)).status_code == 200
    finally:
        await admin.http.aclose()


# ---------------------------------------------------------------- pages with data


async def test_credits_ledger_filters_and_the_spend_chart(stack: Stack, alice: Browserish) -> None:
    ref = await running_job(stack)
    await finish(stack, ref)
    consumer = await signed_in(stack, stack.consumer.user.email)
    try:
        page = await consumer.page("/credits")
        assert page.status_code == 200
        assert page.text.count('class="tx-') == await count(
            stack, Transaction, Transaction.user_id == stack.consumer.user.id
        )
        assert "<svg" in page.text and "Credits spent per day" in page.text
        grants = await consumer.page("/credits?type=grant")
        assert 'class="tx-grant"' in grants.text and 'class="tx-charge"' not in grants.text
        assert (await consumer.page("/credits?type=bogus")).status_code == 422
        assert (await consumer.page("/credits?since=2026-13-40")).status_code == 422
        assert (await consumer.page("/credits?since=2030-01-02&until=2030-01-01")).status_code == 422
        assert (await consumer.page("/jobs")).text.count("/jobs/" + str(ref.job_id)) == 1
    finally:
        await consumer.http.aclose()


async def test_every_page_renders_for_a_signed_in_user(stack: Stack, alice: Browserish) -> None:
    for path in (
        "/chat",
        "/image",
        "/jobs",
        "/credits",
        "/settings",
        "/settings/api-keys",
        "/settings/islands",
        "/cargo",
        "/exchange",
        "/exchange?cargo=sdxl&period=7d",
    ):
        response = await alice.page(path)
        assert response.status_code == 200, path
        assert "/static/vendor/htmx-2.0.11.min.js" in response.text
    assert (await alice.page("/exchange?period=1y")).status_code == 422
    for asset in (
        "/static/vendor/htmx-2.0.11.min.js",
        "/static/vendor/htmx-ext-sse-2.2.4.min.js",
        "/static/app.css",
    ):
        assert (await alice.http.get(asset)).status_code == 200


def test_charts_scale_bars_and_lines_to_the_largest_value() -> None:
    svg = str(bar_chart([("a", 1.0), ("b", 4.0), ("c", 0.0)], "t"))
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([0-9.]+)"', svg)]
    assert heights[1] == max(heights) and heights[0] == heights[1] / 4 and heights[2] == 0
    assert "<title>b: 4</title>" in svg
    line = str(line_chart([("x", 2.0), ("y", 1.0)], "<t>"))
    assert line.count("<circle") == 2 and "&lt;t&gt;" in line  # titles are escaped
    assert "no data yet" in str(bar_chart([], "empty"))


async def test_sessions_are_listed_and_revoked_from_settings(stack: Stack, alice: Browserish) -> None:
    laptop = await signed_in(stack, "alice@example.com")  # a second browser of Alice's
    bob = await signed_in(stack, "bob@example.com")
    try:
        page = await alice.page("/settings")
        ids = re.findall(r'data-session-id="(\d+)"', page.text)
        assert len(ids) == 2 and page.text.count("(this browser)") == 1
        mine = re.search(r'data-session-id="(\d+)"><td>[^<]*<strong>\(this browser\)', page.text).group(1)  # type: ignore[union-attr]
        other = next(i for i in ids if i != mine)
        # Bob cannot sign Alice's browser out.
        assert (await bob.post(f"/settings/sessions/{other}/revoke")).status_code == 404
        assert (await laptop.http.get("/settings")).status_code == 200
        assert (await alice.post(f"/settings/sessions/{other}/revoke")).status_code == 303
        assert (await laptop.http.get("/settings")).status_code == 303  # the laptop is signed out
        assert (await alice.page("/settings")).status_code == 200  # this browser is not
    finally:
        await laptop.http.aclose()
        await bob.http.aclose()
