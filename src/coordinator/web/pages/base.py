"""What every page shares: templates, the signed-in user from the session cookie, CSRF, HTML errors."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from coordinator.accounts.service import Principal
from coordinator.errors import DomainError, Forbidden, ValidationFailed
from coordinator.runtime import Runtime
from coordinator.web.auth import SESSION_COOKIE, current_principal, get_runtime

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parents[1] / "templates"))
CSRF_COOKIE = "coordinator_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):
    """A page that needs a signed-in user was asked for without a session: go to the login page."""


class CsrfRejected(Forbidden):
    def __init__(self) -> None:
        super().__init__("The form has expired or did not come from this site; reload the page and retry")


# ---------------------------------------------------------------- CSRF (signed double-submit cookie)


def _csrf_seed(request: Request) -> str:
    """The browser's CSRF seed: its cookie, or a new one that `render` sets on the response."""
    seed: str | None = getattr(request.state, "csrf_seed", None)
    if seed is None:
        seed = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        request.state.csrf_seed = seed
    return seed


def csrf_token(request: Request) -> str:
    """The token forms carry: an HMAC of the browser's seed cookie with the server's secret, so a page
    on another site can neither read nor forge it (OWASP "signed double-submit cookie")."""
    secret = get_runtime(request).settings.secret_key
    return hmac.new(secret.encode(), b"csrf:" + _csrf_seed(request).encode(), hashlib.sha256).hexdigest()


async def check_csrf(request: Request) -> None:
    """Refuse an unsafe request whose form field (or htmx header) does not match the seed cookie."""
    if request.method in SAFE_METHODS:
        return
    seed = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not seed or not sent or not hmac.compare_digest(sent, csrf_token(request)):
        raise CsrfRejected()


def set_csrf_cookie(request: Request, response: Response) -> None:
    seed = getattr(request.state, "csrf_seed", None)
    if seed is not None and request.cookies.get(CSRF_COOKIE) != seed:
        response.set_cookie(
            CSRF_COOKIE, seed, httponly=True, samesite="lax", secure=not get_runtime(request).settings.is_dev
        )


# ---------------------------------------------------------------- who is signed in


async def page_user(request: Request) -> Principal | None:
    """The principal of the session cookie; a bearer key does not sign a browser in."""
    if not request.cookies.get(SESSION_COOKIE) or request.headers.get("authorization"):
        return None
    return await current_principal(request)


async def signed_in(request: Request) -> Principal:
    principal = await page_user(request)
    if principal is None:
        raise LoginRequired()
    return principal


async def admin_only(request: Request) -> Principal:
    principal = await signed_in(request)
    if not principal.is_admin:
        raise Forbidden("This page is for operators (role admin) only")
    return principal


# ---------------------------------------------------------------- rendering


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    values = {
        "request": request,
        "user": principal.user if principal is not None else None,
        "csrf_token": csrf_token(request),
        "path": request.url.path,
        **(context or {}),
    }
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status_code)
    set_csrf_cookie(request, response)
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def error_page(request: Request, exc: DomainError) -> HTMLResponse:
    errors = exc.errors if isinstance(exc, ValidationFailed) else {}
    return render(
        request,
        "error.html",
        {"status": exc.status_code, "message": exc.message, "errors": errors},
        status_code=exc.status_code,
    )


class PageRoute(APIRoute):
    """A page route: domain errors become HTML pages with their status, and a missing session sends the
    browser to the login page (an htmx request is told to do so with `HX-Redirect`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = "/auth/login"
                if is_htmx(request):
                    return Response(status_code=401, headers={"HX-Redirect": target})
                return redirect(target)
            except DomainError as exc:
                return error_page(request, exc)

        return page_handler


def runtime_of(request: Request) -> Runtime:
    return get_runtime(request)
