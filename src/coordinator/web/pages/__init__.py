"""The web app's pages: server-rendered Jinja2 + htmx (vendored, served from `/static`), live over SSE."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from coordinator.web.pages import account, auth, catalog, chat, fleet, host, island_access, jobs, review

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()
for module in (auth, chat, jobs, island_access, account, catalog, fleet, host, review):
    router.include_router(module.router)


def install_pages(app: FastAPI) -> None:
    """Mount the page routes and the static files (htmx, its SSE extension, the stylesheet)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
