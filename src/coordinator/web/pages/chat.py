"""`/chat` (a conversation with the default chat Cargo, tokens streaming in) and `/image` (prompt →
progress → image with its seed). A turn is one job; the page follows it over `/jobs/{id}/live`."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from coordinator.accounts.service import Principal
from coordinator.errors import ValidationFailed
from coordinator.jobs import monitor, rules
from coordinator.jobs import service as jobs
from coordinator.jobs.models import Job
from coordinator.jobs.views import usage_of
from coordinator.web.pages.base import PageRoute, check_csrf, is_htmx, redirect, render, runtime_of, signed_in
from coordinator.web.pages.live import image_of
from coordinator.workloads import service as workloads
from coordinator.workloads.models import Workload

router = APIRouter(route_class=PageRoute, include_in_schema=False)
MAX_PROMPT = 8000


def turn(job: Job, slug: str, tokens: int = 0) -> dict[str, Any]:
    """What the page shows of one job: prompt, reply so far, and whether it is still running."""
    prompt = job.input.get("prompt", "") if isinstance(job.input, dict) else ""
    return {
        "tokens": tokens,
        "job": job,
        "slug": slug,
        "prompt": prompt,
        "status": rules.public_status(job.state),
        "terminal": rules.is_terminal(job.state),
        "usage": usage_of(job),
        "image": image_of(job),
    }


async def _cargos(request: Request, kind: str) -> list[Workload]:
    async with runtime_of(request).db.read() as session:
        return [w for w in await workloads.list_workloads(session) if w.kind == kind]


def _prompt(value: str) -> str:
    prompt = value.strip()
    if not prompt or len(prompt) > MAX_PROMPT:
        raise ValidationFailed("Invalid prompt", {"prompt": [f"must be 1–{MAX_PROMPT} characters"]})
    return prompt


async def _submitted(request: Request, job: Job, slug: str, kind: str) -> Response:
    if not is_htmx(request):
        return redirect(f"/{kind}")
    return render(request, "fragments/turn.html", {"t": turn(job, slug), "kind": kind})


@router.get("/chat")
async def chat_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        default = await workloads.default_chat_workload(session)
        history = await monitor.recent_jobs_of_kind(session, principal.user.id, "chat", limit=20)
        tokens = await monitor.reply_tokens_of(session, [j for j, _ in history if rules.is_terminal(j.state)])
        turns = [turn(job, slug, tokens.get(job.id, 0)) for job, slug in reversed(history)]
    context = {"turns": turns, "cargos": await _cargos(request, "chat"), "default": default.slug}
    return render(request, "chat.html", context)


@router.post("/chat", dependencies=[Depends(check_csrf)])
async def chat_send(
    request: Request,
    prompt: str = Form(""),
    cargo: str = Form(""),
    principal: Principal = Depends(signed_in),
) -> Response:
    runtime = runtime_of(request)
    text = _prompt(prompt)
    if not cargo:
        async with runtime.db.read() as session:
            cargo = (await workloads.default_chat_workload(session)).slug
    job = await jobs.submit_job(runtime, principal.user, cargo, {"prompt": text, "max_tokens": 256})
    return await _submitted(request, job, cargo, "chat")


@router.get("/image")
async def image_page(request: Request, principal: Principal = Depends(signed_in)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        history = await monitor.recent_jobs_of_kind(session, principal.user.id, "image", limit=8)
    context = {"turns": [turn(job, slug) for job, slug in history], "cargos": await _cargos(request, "image")}
    return render(request, "image.html", context)


@router.post("/image", dependencies=[Depends(check_csrf)])
async def image_send(
    request: Request,
    prompt: str = Form(""),
    cargo: str = Form("sdxl"),
    steps: int = Form(8, ge=1, le=150),
    seed: str = Form(""),
    principal: Principal = Depends(signed_in),
) -> Response:
    body: dict[str, Any] = {"prompt": _prompt(prompt), "steps": steps, "width": 256, "height": 256}
    if seed.strip():
        if not seed.strip().isdigit() or len(seed.strip()) > 18:
            raise ValidationFailed("Invalid seed", {"seed": ["must be a whole number ≥ 0"]})
        body["seed"] = int(seed.strip())
    else:  # a seed chosen here, so the page can show which one made the picture
        body["seed"] = secrets.randbelow(2**31)
    job = await jobs.submit_job(runtime_of(request), principal.user, cargo or "sdxl", body)
    return await _submitted(request, job, cargo or "sdxl", "image")
