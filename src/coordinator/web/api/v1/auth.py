"""Passwordless sign-in over the API: request a magic link, spend it for a session cookie, sign out.

The browser's landing page `/auth/magic/<token>` is in `web/pages/auth.py`."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel, Field

from coordinator.accounts import service as accounts
from coordinator.web import ratelimit, schemas
from coordinator.web.auth import SESSION_COOKIE, get_runtime, set_session_cookie
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["auth"])


class MagicLinkRequest(BaseModel):
    email: str = Field(min_length=3, max_length=320)


class SessionRequest(BaseModel):
    token: str = Field(min_length=10, max_length=200)


@router.post(
    "/api/v1/auth/magic-link", response_model=schemas.MagicLinkSent, responses=error_responses(422, 429)
)
async def request_magic_link(body: MagicLinkRequest, request: Request) -> dict[str, Any]:
    ratelimit.limit_magic_links(request, body.email)
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        await accounts.request_magic_link(
            session,
            runtime.settings.secret_key,
            runtime.mailer,
            body.email,
            base_url=runtime.base_url,
            ttl_seconds=runtime.settings.magic_link_ttl_seconds,
        )
    return {"data": {"sent": True}}


async def _consume(request: Request, token: str) -> tuple[Any, str]:
    ratelimit.limit_sign_ins(request)
    runtime = get_runtime(request)
    async with runtime.db.transaction() as session:
        return await accounts.consume_magic_link(
            session,
            runtime.settings.secret_key,
            token,
            signup_credits=runtime.signup_credits,
            session_ttl_days=runtime.settings.session_ttl_days,
        )


@router.post(
    "/api/v1/auth/session",
    response_model=schemas.SessionCreated,
    responses=error_responses(401, 404, 422, 429),
)
async def create_session(body: SessionRequest, request: Request, response: Response) -> dict[str, Any]:
    user, session_token = await _consume(request, body.token)
    set_session_cookie(request, response, session_token)
    return {"data": {"user_id": str(user.id), "email": user.email}}


@router.delete("/api/v1/auth/session", response_model=schemas.MagicLinkSent)
async def delete_session(request: Request, response: Response) -> dict[str, Any]:
    runtime = get_runtime(request)
    if cookie := request.cookies.get(SESSION_COOKIE):
        async with runtime.db.transaction() as session:
            await accounts.close_session(session, runtime.settings.secret_key, cookie)
    response.delete_cookie(SESSION_COOKIE)
    return {"data": {"signed_out": True}}
