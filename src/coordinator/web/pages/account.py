"""`/credits` (balance, ledger with filters, spend per day) and the settings pages: API keys (created
with scopes, shown once, revoked) and my Islands (status, karma, earnings; pair with a code; suspend;
device tokens and NATS credentials in `island_access.py`)."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from coordinator.accounts import service as accounts
from coordinator.accounts.service import Principal
from coordinator.billing import statements
from coordinator.errors import ValidationFailed
from coordinator.hosts import owners, pairing
from coordinator.hosts import service as hosts
from coordinator.web.auth import SESSION_COOKIE
from coordinator.web.fleet_events import fleet_changed
from coordinator.web.pages.base import PageRoute, check_csrf, redirect, render, runtime_of, signed_in
from coordinator.web.pages.charts import bar_chart
from coordinator.web.pages.island_access import islands_context

router = APIRouter(route_class=PageRoute, include_in_schema=False)
LEDGER_PAGE = 50


def _date(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationFailed("Invalid filter", {field: ["must be a date (YYYY-MM-DD)"]}) from None


@router.get("/credits")
async def credits_page(
    request: Request,
    type: str | None = Query(None, max_length=16),
    since: str | None = Query(None, max_length=10),
    until: str | None = Query(None, max_length=10),
    page: int = Query(1, ge=1, le=100_000),
    principal: Principal = Depends(signed_in),
) -> HTMLResponse:
    flt = statements.LedgerFilter(type or None, _date(since, "since"), _date(until, "until"))
    async with runtime_of(request).db.read() as session:
        rows, total = await statements.list_transactions(
            session, principal.user.id, flt, limit=LEDGER_PAGE, offset=(page - 1) * LEDGER_PAGE
        )
        spend = await statements.spend_per_day(session, principal.user.id, days=30)
    chart = bar_chart(
        [(d.strftime("%m-%d"), float(v)) for d, v in spend], "Credits spent per day, last 30 days"
    )
    context = {
        "balance": principal.user.credits,
        "rows": rows,
        "total": total,
        "filter": {"type": type or "", "since": since or "", "until": until or ""},
        "types": statements.TRANSACTION_TYPES,
        "chart": chart,
        "spent_30d": sum(v for _, v in spend),
        "page": page,
        "pages": max(1, -(-total // LEDGER_PAGE)),
    }
    return render(request, "credits.html", context)


@router.get("/credits/balance")
async def credits_balance(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    """The live balance on the credits page (polled)."""
    return HTMLResponse(f"{principal.user.credits:,.2f}")


@router.get("/settings")
async def settings_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        sessions = await accounts.list_sessions(session, principal.user.id)
    current = accounts.digest(runtime.settings.secret_key, request.cookies.get(SESSION_COOKIE, ""))
    context = {"account": principal.user, "sessions": sessions, "current_hash": current}
    return render(request, "settings.html", context)


@router.post("/settings/sessions/{session_id}/revoke", dependencies=[Depends(check_csrf)])
async def revoke_session(
    session_id: int, request: Request, principal: Principal = Depends(signed_in)
) -> Response:
    """Sign a browser out (this one included: it then lands on the login page)."""
    async with runtime_of(request).db.transaction() as session:
        await accounts.revoke_session(session, principal.user.id, session_id)
    return redirect("/settings")


@router.get("/settings/api-keys")
async def api_keys_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        keys = await accounts.list_api_keys(session, principal.user.id)
    return render(request, "api_keys.html", {"keys": keys, "scopes": sorted(accounts.VALID_SCOPES)})


@router.post("/settings/api-keys", dependencies=[Depends(check_csrf)])
async def create_api_key(
    request: Request,
    name: str = Form(""),
    scopes: list[str] = Form([]),
    principal: Principal = Depends(signed_in),
) -> HTMLResponse:
    """Create a key and show its secret on this one response (it is stored only as an HMAC)."""
    runtime = runtime_of(request)
    if not scopes:
        raise ValidationFailed("Invalid API key", {"scopes": ["choose at least one scope"]})
    async with runtime.db.transaction() as session:
        key, secret = await accounts.create_api_key(
            session, runtime.settings.secret_key, principal.user, name, scopes
        )
    async with runtime.db.read() as session:
        keys = await accounts.list_api_keys(session, principal.user.id)
    context = {"keys": keys, "scopes": sorted(accounts.VALID_SCOPES), "created": key, "secret": secret}
    response = render(request, "api_keys.html", context, status_code=201)
    response.headers["Cache-Control"] = "no-store"  # the secret must not stay in a cache
    return response


@router.post("/settings/api-keys/{key_id}/revoke", dependencies=[Depends(check_csrf)])
async def revoke_api_key(
    key_id: str, request: Request, principal: Principal = Depends(signed_in)
) -> Response:
    async with runtime_of(request).db.transaction() as session:
        await accounts.revoke_api_key(session, principal.user.id, key_id)
    return redirect("/settings/api-keys")


@router.get("/settings/islands")
async def islands_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    return await _islands(request, principal)


async def _islands(
    request: Request, principal: Principal, *, paired: str | None = None, status_code: int = 200
) -> HTMLResponse:
    context = {**await islands_context(request, principal), "paired": paired}
    return render(request, "islands.html", context, status_code=status_code)


@router.post("/settings/islands/pair", dependencies=[Depends(check_csrf)])
async def pair_island(
    request: Request, code: str = Form(""), principal: Principal = Depends(signed_in)
) -> HTMLResponse:
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        host = await pairing.claim_pairing_code(session, code, principal.user.id)
    hosts.sync_view(runtime.fleet, host)
    await fleet_changed(runtime)
    return await _islands(request, principal, paired=str(host.id))


@router.post("/settings/islands/{host_id}/{action}", dependencies=[Depends(check_csrf)])
async def own_island_action(
    host_id: str, action: str, request: Request, principal: Principal = Depends(signed_in)
) -> Response:
    runtime = runtime_of(request)
    if action not in ("suspend", "resume"):
        raise ValidationFailed("Unknown action", {"action": ["must be suspend or resume"]})
    change = owners.suspend_own if action == "suspend" else owners.resume_own
    async with runtime.db.transaction() as session:
        host = await change(session, host_id, principal.user.id)
    hosts.sync_view(runtime.fleet, host)
    await fleet_changed(runtime)
    return redirect("/settings/islands")
