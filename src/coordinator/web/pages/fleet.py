"""Operator pages: the fleet (Islands by status and region, heartbeat age, approve/suspend/resume, the
table pushed live over SSE), the jobs monitor and users (grant credits, ban). Admin only."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.responses import StreamingResponse

from coordinator.accounts import service as accounts
from coordinator.accounts.models import User
from coordinator.accounts.service import Principal
from coordinator.billing import ledger
from coordinator.errors import NotFound, ValidationFailed
from coordinator.hosts import service as hosts
from coordinator.jobs import monitor, rules
from coordinator.jobs import service as jobs
from coordinator.jobs.views import usage_of
from coordinator.web.fleet_events import fleet_changed
from coordinator.web.pages.base import (
    PageRoute,
    admin_only,
    check_csrf,
    is_htmx,
    redirect,
    render,
    runtime_of,
)
from coordinator.web.pages.charts import bar_chart, line_chart
from coordinator.web.pages.fleet_live import fleet_live_response

router = APIRouter(route_class=PageRoute, include_in_schema=False)
MAX_GRANT = Decimal(10_000_000)


def heartbeat_age(last: datetime | None, now: datetime | None = None) -> str:
    """How long ago an Island last beat, for people: "4 s", "3 min", "2 h", "never"."""
    if last is None:
        return "never"
    seconds = max(0, int(((now or datetime.now(UTC)) - last).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


# ---------------------------------------------------------------- fleet


async def _fleet_context(request: Request) -> dict[str, object]:
    async with runtime_of(request).db.read() as session:
        items = await hosts.list_hosts(session)
    by_status = Counter(h.status for h in items)
    by_region = Counter(h.region or "unknown" for h in items)
    rows = [{"host": h, "age": heartbeat_age(h.last_heartbeat_at)} for h in items]
    return {
        "islands": rows,
        "by_status": sorted(by_status.items()),
        "by_region": sorted(by_region.items()),
        "region_chart": bar_chart(sorted(by_region.items()), "Islands per region"),
    }


@router.get("/admin")
async def admin_home(_: Principal = Depends(admin_only)) -> Response:
    return redirect("/admin/fleet")


@router.get("/admin/fleet")
async def fleet_page(request: Request, _: Principal = Depends(admin_only)) -> HTMLResponse:
    return render(request, "admin_fleet.html", await _fleet_context(request))


@router.get("/admin/fleet/table")
async def fleet_table(request: Request, _: Principal = Depends(admin_only)) -> HTMLResponse:
    """The live part of the fleet page (the page polls it every second)."""
    return render(request, "fragments/fleet_table.html", await _fleet_context(request))


@router.get("/admin/fleet/live")
async def fleet_live(request: Request, _: Principal = Depends(admin_only)) -> StreamingResponse:
    """The table as Server-Sent Events, sent again whenever the fleet changes (`fleet_live.py`)."""
    return fleet_live_response(request, runtime_of(request), lambda: _fleet_context(request))


@router.post("/admin/fleet/{host_id}/{action}", dependencies=[Depends(check_csrf)])
async def fleet_action(
    host_id: str,
    action: str,
    request: Request,
    reason: str = Form("", max_length=2000),
    _: Principal = Depends(admin_only),
) -> Response:
    runtime = runtime_of(request)
    async with runtime.db.transaction() as session:
        if action == "approve":
            host = await hosts.set_approved(session, host_id)
        elif action == "suspend":
            host = await hosts.suspend(session, host_id, reason.strip() or "suspended by an operator")
        elif action == "resume":
            host = await hosts.resume(session, host_id)
        else:
            raise NotFound("Unknown action")
    hosts.sync_view(runtime.fleet, host)
    await fleet_changed(runtime)
    if is_htmx(request):
        return render(request, "fragments/fleet_table.html", await _fleet_context(request))
    return redirect("/admin/fleet")


# ---------------------------------------------------------------- jobs monitor


@router.get("/admin/jobs")
async def jobs_monitor(request: Request, _: Principal = Depends(admin_only)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        counts = await monitor.counts_by_state(session)
        minutes = await monitor.throughput(session, minutes=60)
    labels = [m.minute.strftime("%H:%M") for m in minutes]
    context = {
        "counts": [(rules.public_status(s), n) for s, n in counts.items()],
        "throughput": bar_chart(
            list(zip(labels, [float(m.finished) for m in minutes], strict=True)), "Jobs finished per minute"
        ),
        "latency": line_chart(
            [(label, m.dispatch_ms or 0.0) for label, m in zip(labels, minutes, strict=True)],
            "Mean dispatch latency (ms) per minute",
        ),
    }
    return render(request, "admin_jobs.html", context)


@router.get("/admin/jobs/counts")
async def jobs_counts(request: Request, _: Principal = Depends(admin_only)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        counts = await monitor.counts_by_state(session)
    return render(
        request,
        "fragments/job_counts.html",
        {"counts": [(rules.public_status(s), n) for s, n in counts.items()]},
    )


@router.get("/admin/jobs/{job_id}")
async def job_history(
    job_id: str, request: Request, principal: Principal = Depends(admin_only)
) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        job, slug = await jobs.get_job(session, principal.user, job_id)
        events = await monitor.job_history(session, job.id)
    context = {"job": job, "slug": slug, "events": events, "status": rules.public_status(job.state)}
    context["usage"] = usage_of(job)
    return render(request, "admin_job.html", context)


# ---------------------------------------------------------------- users


@router.get("/admin/users")
async def users_page(
    request: Request, q: str | None = Query(None, max_length=320), _: Principal = Depends(admin_only)
) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        users = await accounts.list_users(session, search=q, limit=100)
    return render(
        request, "admin_users.html", {"users": users, "q": q or "", "nonce": secrets.token_urlsafe(16)}
    )


def _amount(value: str) -> Decimal:
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        amount = Decimal(0)
    if not amount.is_finite() or amount <= 0 or amount > MAX_GRANT:
        raise ValidationFailed(
            "Invalid amount", {"amount": [f"must be a number above 0 and at most {MAX_GRANT}"]}
        )
    return amount


@router.post("/admin/users/{user_id}/grant", dependencies=[Depends(check_csrf)])
async def grant_credits(
    user_id: int,
    request: Request,
    amount: str = Form(""),
    reason: str = Form("", max_length=500),
    nonce: str = Form("", max_length=64),
    principal: Principal = Depends(admin_only),
) -> Response:
    """Grant credits once per rendered form: the form's nonce is the ledger's idempotency key, so a
    double click or a resent form does not grant twice."""
    credits = _amount(amount)
    if len(nonce) < 16:
        raise ValidationFailed("Invalid form", {"nonce": ["missing; reload the page"]})
    description = reason.strip() or f"granted by {principal.user.email}"
    async with runtime_of(request).db.transaction() as session:
        if await session.get(User, user_id) is None:
            raise NotFound("User not found")
        await ledger.credit(
            session,
            user_id,
            credits,
            type="grant",
            idempotency_key=f"grant:{user_id}:{nonce}",
            description=description,
        )
    return redirect("/admin/users")


@router.post("/admin/users/{user_id}/{action}", dependencies=[Depends(check_csrf)])
async def ban_user(
    user_id: int,
    action: str,
    request: Request,
    reason: str = Form("", max_length=2000),
    principal: Principal = Depends(admin_only),
) -> Response:
    if action not in ("ban", "unban"):
        raise NotFound("Unknown action")
    if user_id == principal.user.id:
        raise ValidationFailed("Not allowed", {"user": ["an operator cannot ban themselves"]})
    async with runtime_of(request).db.transaction() as session:
        await accounts.set_banned(session, user_id, action == "ban", reason)
    return redirect("/admin/users")
