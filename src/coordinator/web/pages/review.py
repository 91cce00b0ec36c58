"""Identity verification and the operators' review pages: `/verify` (my KYC status, start or retry),
`/admin/kyc` (the verification queue: approve, reject, revoke), `/admin/registry` (submitted Cargos with
their scans: approve at a trust level, reject, request changes) and `/admin/exchange` (supply and demand
per Cargo, the surge factor, the market snapshots; take one now). Every admin page is role admin only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from coordinator.accounts.service import Principal
from coordinator.billing import exchange as market
from coordinator.billing.exchange_models import MarketSnapshot
from coordinator.errors import NotFound, ValidationFailed
from coordinator.marketplace import registry
from coordinator.verification import rules as kyc_rules
from coordinator.verification import service as verification
from coordinator.verification.providers import provider_from_settings
from coordinator.web.pages.base import (
    PageRoute,
    admin_only,
    check_csrf,
    redirect,
    render,
    runtime_of,
    signed_in,
)
from coordinator.workloads.models import Workload

router = APIRouter(route_class=PageRoute, include_in_schema=False)
KYC_MOVES = {"approve": kyc_rules.APPROVE, "reject": kyc_rules.REJECT, "revoke": kyc_rules.REVOKE}
KYC_FILTERS = ("pending", "verified", "rejected", "revoked", "superseded")
SNAPSHOT_ROWS = 50


# ---------------------------------------------------------------- /verify


async def _verify(
    request: Request, principal: Principal, *, started: Any = None, status_code: int = 200
) -> HTMLResponse:
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        view = await verification.get_status(session, principal.user.id)
    provider = provider_from_settings(runtime.settings).name
    context = {"view": view, "provider": provider, "started": started}
    return render(request, "verify.html", context, status_code=status_code)


@router.get("/verify")
async def verify_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    return await _verify(request, principal)


@router.post("/verify", dependencies=[Depends(check_csrf)])
async def start_verification(
    request: Request,
    legal_name: str = Form("", max_length=300),
    country: str = Form("", max_length=2),
    principal: Principal = Depends(signed_in),
) -> Response:
    """Start (or retry) my verification: a statement for the operators' queue, or a Stripe Identity
    session the browser is sent to."""
    runtime = runtime_of(request)
    started = await verification.start(
        runtime.db,
        runtime.mailer,
        provider_from_settings(runtime.settings),
        principal.user.id,
        legal_name=legal_name,
        country=country,
    )
    if started.url:
        return redirect(started.url)
    return await _verify(request, principal, started=started, status_code=201)


# ---------------------------------------------------------------- /admin/kyc


@router.get("/admin/kyc")
async def kyc_queue(
    request: Request, status: str = Query("pending", max_length=16), _: Principal = Depends(admin_only)
) -> HTMLResponse:
    if status not in KYC_FILTERS:
        raise ValidationFailed("Invalid filter", {"status": [f"must be one of {', '.join(KYC_FILTERS)}"]})
    async with runtime_of(request).db.read() as session:
        items = await verification.queue(session, status=status, limit=200)
    return render(request, "admin_kyc.html", {"items": items, "status": status, "filters": KYC_FILTERS})


@router.post("/admin/kyc/{user_id}/{action}", dependencies=[Depends(check_csrf)])
async def kyc_decide(
    user_id: int,
    action: str,
    request: Request,
    reason: str = Form("", max_length=2000),
    admin: Principal = Depends(admin_only),
) -> Response:
    move = KYC_MOVES.get(action)
    if move is None:
        raise NotFound("Unknown action")
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        await verification.decide(
            session, runtime.mailer, user_id, move, admin_id=admin.user.id, reason=reason
        )
    return redirect("/admin/kyc")


# ---------------------------------------------------------------- /admin/registry


@router.get("/admin/registry")
async def registry_queue(request: Request, _: Principal = Depends(admin_only)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        items = []
        for submission in await registry.review_queue(session):
            scans = await registry.latest_scans(session, submission_id=submission.id)
            items.append({"s": submission, "scan": registry.scan_summary(scans) if scans else None})
    return render(request, "admin_registry.html", {"items": items})


@router.post("/admin/registry/{submission_id}/{action}", dependencies=[Depends(check_csrf)])
async def registry_decide(
    submission_id: int,
    action: str,
    request: Request,
    reason: str = Form("", max_length=2000),
    trust_level: int | None = Form(None, ge=0, le=3),
    admin: Principal = Depends(admin_only),
) -> Response:
    async with runtime_of(request).db.transaction() as session:
        if action == "approve":
            await registry.approve(session, admin.user, submission_id, trust_level, reason.strip() or None)
        elif action == "reject":
            await registry.reject(session, admin.user, submission_id, reason)
        elif action == "request-changes":
            await registry.request_changes(session, admin.user, submission_id, reason)
        else:
            raise NotFound("Unknown action")
    return redirect("/admin/registry")


# ---------------------------------------------------------------- /admin/exchange


@router.get("/admin/exchange")
async def admin_exchange(request: Request, _: Principal = Depends(admin_only)) -> HTMLResponse:
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        rates = await market.current_rates(session)
        surge = await runtime.surge.current(session)
        activity = {
            r[0]: (int(r[1]), int(r[2]), r[3])
            for r in (await session.execute(market.INTERVAL_ACTIVITY_SQL, {"seconds": 300})).all()
        }
        slugs = dict((await session.execute(select(Workload.slug, Workload.id))).tuples().all())
        snapshots = (
            (
                await session.execute(
                    select(MarketSnapshot, Workload.slug)
                    .join(Workload, Workload.id == MarketSnapshot.workload_id)
                    .order_by(MarketSnapshot.taken_at.desc(), MarketSnapshot.id.desc())
                    .limit(SNAPSHOT_ROWS)
                )
            )
            .tuples()
            .all()
        )
    rows = []
    for rate in rates:
        queued, cleared, clearing = activity.get(slugs.get(rate["workload_slug"], -1), (0, 0, None))
        rows.append({**rate, "demand": queued, "cleared": cleared, "clearing": clearing})
    context = {"rows": rows, "surge": surge, "surging": surge > 1, "snapshots": snapshots}
    return render(request, "admin_exchange.html", context)


@router.post("/admin/exchange/snapshot", dependencies=[Depends(check_csrf)])
async def take_snapshot(request: Request, _: Principal = Depends(admin_only)) -> Response:
    """Take the market snapshots now (as the periodic task does), at the current surge."""
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        surge = await runtime.surge.compute(session)  # a snapshot records the factor now
        await market.take_snapshots(session, surge=surge)
    return redirect("/admin/exchange")
