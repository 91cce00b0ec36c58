"""Authentication dependencies: a Bearer API key (every client) or a session cookie (the web pages)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from coordinator.accounts import service as accounts
from coordinator.accounts.service import Principal
from coordinator.errors import Forbidden, Unauthorized
from coordinator.runtime import Runtime
from coordinator.telemetry import context
from coordinator.web import ratelimit

SESSION_COOKIE = "coordinator_session"


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    """The session cookie of the API's sign-in and the pages': HttpOnly, SameSite=Lax, Secure outside
    development, as long-lived as the session."""
    settings = get_runtime(request).settings
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_days * 86400,
        httponly=True,
        samesite="lax",
        secure=not settings.is_dev,
    )


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def current_principal(request: Request) -> Principal | None:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    runtime = get_runtime(request)
    principal: Principal | None = None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        ratelimit.refuse_if_guessing(request)
        principal = await _bearer_principal(runtime, token.strip())
        if principal is None:
            ratelimit.count_bad_credentials(request)
    elif not header and (cookie := request.cookies.get(SESSION_COOKIE)):
        ratelimit.refuse_if_guessing(request)
        async with runtime.db.session() as session:
            principal = await accounts.authenticate_session(
                session, runtime.settings.secret_key, cookie, ttl_days=runtime.settings.session_ttl_days
            )
        if principal is None:
            ratelimit.count_bad_credentials(request)
    request.state.principal = principal
    if principal is not None:
        context.add(user_id=principal.user.id)
    return principal


async def _bearer_principal(runtime: Runtime, token: str) -> Principal | None:
    """The principal of an API key: from the cache (`accounts/principals.py`), else read and remembered."""
    key_digest = accounts.digest(runtime.settings.secret_key, token)
    if (principal := runtime.principals.get(key_digest)) is not None:
        return principal
    async with runtime.db.read() as session:
        found = await accounts.authenticate_api_key_row(session, runtime.settings.secret_key, token)
    if found is None:
        return None
    principal, expires_at = found
    if principal.key_use_due and principal.api_key_id is not None:
        async with runtime.db.transaction() as session:
            await accounts.touch_api_key(session, principal.api_key_id)
    runtime.principals.put(key_digest, principal, expires_at)
    return principal


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        if principal is None:
            raise Unauthorized("Invalid or missing API key")
        if scope not in principal.scopes:
            raise Forbidden(f"This API key lacks the '{scope}' scope")
        await ratelimit.enforce(request, principal)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


require_read = require_scope("read")
require_write = require_scope("write")


async def require_admin(request: Request) -> Principal:
    principal = await require_read(request)
    if not principal.is_admin:
        raise Forbidden("Admin role required")
    return principal
