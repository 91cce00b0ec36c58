"""Sign-in pages: ask for a magic link, spend it for a session cookie, sign out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from coordinator.accounts import service as accounts
from coordinator.errors import ValidationFailed
from coordinator.web import ratelimit
from coordinator.web.auth import SESSION_COOKIE, set_session_cookie
from coordinator.web.pages.base import (
    PageRoute,
    check_csrf,
    page_user,
    redirect,
    render,
    runtime_of,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/")
async def home(request: Request) -> Response:
    return redirect("/chat" if await page_user(request) else "/auth/login")


@router.get("/auth/login")
async def login_page(request: Request) -> Response:
    if await page_user(request) is not None:
        return redirect("/chat")
    return render(request, "login.html", {"sent": False})


@router.post("/auth/login", dependencies=[Depends(check_csrf)])
async def send_link(request: Request, email: str = Form("")) -> HTMLResponse:
    ratelimit.limit_magic_links(request, email)
    runtime = runtime_of(request)
    try:
        async with runtime.db.transaction() as session:
            await accounts.request_magic_link(
                session,
                runtime.settings.secret_key,
                runtime.mailer,
                email,
                base_url=runtime.base_url,
                ttl_seconds=runtime.settings.magic_link_ttl_seconds,
            )
    except ValidationFailed:
        context = {"sent": False, "email": email, "error": "Enter a valid e-mail address."}
        return render(request, "login.html", context, status_code=422)
    context = {
        "sent": True,
        "email": accounts.normalize_email(email),
        "ttl_minutes": runtime.settings.magic_link_ttl_seconds // 60,
    }
    return render(request, "login.html", context)


@router.get("/auth/magic/{token}")
async def magic_link_landing(token: str, request: Request) -> Response:
    ratelimit.limit_sign_ins(request)
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        _, session_token = await accounts.consume_magic_link(
            session,
            runtime.settings.secret_key,
            token,
            signup_credits=runtime.signup_credits,
            session_ttl_days=runtime.settings.session_ttl_days,
        )
    response = redirect("/chat")
    set_session_cookie(request, response, session_token)
    return response


@router.post("/auth/logout", dependencies=[Depends(check_csrf)])
async def sign_out(request: Request) -> Response:
    runtime = runtime_of(request)
    if cookie := request.cookies.get(SESSION_COOKIE):
        async with runtime.db.transaction() as session:
            await accounts.close_session(session, runtime.settings.secret_key, cookie)
    response = redirect("/auth/login")
    response.delete_cookie(SESSION_COOKIE)
    return response
