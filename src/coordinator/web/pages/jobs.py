"""My jobs: the list, one job (live status, output, placement, usage and charge), its live events, stop,
and an image job's download. Every route reads the job through `jobs.get_job` (owner or admin only)."""

from __future__ import annotations

import base64
import binascii
import re

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.responses import StreamingResponse

from coordinator.accounts.service import Principal
from coordinator.errors import NotFound
from coordinator.jobs import monitor, rules
from coordinator.jobs import service as jobs
from coordinator.jobs.views import usage_of
from coordinator.web.pages.base import PageRoute, check_csrf, is_htmx, redirect, render, runtime_of, signed_in
from coordinator.web.pages.live import image_of, live_response

router = APIRouter(route_class=PageRoute, include_in_schema=False)
PAGE_SIZE = 25


@router.get("/jobs")
async def job_list(
    request: Request, page: int = Query(1, ge=1, le=100_000), principal: Principal = Depends(signed_in)
) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        rows, total = await jobs.list_jobs(
            session, principal.user, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    items = [
        {"job": job, "slug": slug, "status": rules.public_status(job.state), "usage": usage_of(job)}
        for job, slug in rows
    ]
    pages = max(1, -(-total // PAGE_SIZE))
    return render(request, "jobs.html", {"items": items, "total": total, "page": page, "pages": pages})


@router.get("/jobs/{job_id}")
async def job_detail(
    job_id: str, request: Request, principal: Principal = Depends(signed_in)
) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        job, slug = await jobs.get_job(session, principal.user, job_id)
        tokens = await monitor.reply_tokens(session, job)
    context = {
        "tokens": tokens,
        "job": job,
        "slug": slug,
        "status": rules.public_status(job.state),
        "terminal": rules.is_terminal(job.state),
        "usage": usage_of(job),
        "image": image_of(job),
    }
    return render(request, "job.html", context)


@router.get("/jobs/{job_id}/live")
async def job_live(
    job_id: str, request: Request, principal: Principal = Depends(signed_in)
) -> StreamingResponse:
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        job, _ = await jobs.get_job(session, principal.user, job_id)
    return live_response(request, runtime, job)


@router.post("/jobs/{job_id}/cancel", dependencies=[Depends(check_csrf)])
async def job_cancel(job_id: str, request: Request, principal: Principal = Depends(signed_in)) -> Response:
    """The stop button: cancels the job (full refund); the live stream then ends with `cancelled`."""
    await jobs.cancel_job(runtime_of(request), principal.user, job_id)
    if is_htmx(request):
        return Response(status_code=204)
    return redirect(f"/jobs/{job_id}")


@router.get("/jobs/{job_id}/image")
async def job_image(job_id: str, request: Request, principal: Principal = Depends(signed_in)) -> Response:
    async with runtime_of(request).db.read() as session:
        job, _ = await jobs.get_job(session, principal.user, job_id)
    image = image_of(job)
    if image is None:
        raise NotFound("This job has no image")
    try:
        data = base64.b64decode(str(image["image_data"]), validate=True)
    except (binascii.Error, ValueError):
        raise NotFound("This job's image is unreadable") from None
    fmt = re.sub(r"[^a-z0-9]", "", str(image.get("format") or "").lower())[:10] or "png"
    return Response(
        data,
        media_type=f"image/{fmt}",
        headers={"Content-Disposition": f'attachment; filename="archipelag-{job.id}.{fmt}"'},
    )
