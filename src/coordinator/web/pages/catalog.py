"""`/cargo` (the catalogue: runtime, trust level, price, market rate) and `/exchange` (rates, price
history per Cargo as SVG, surge state)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from coordinator.accounts.service import Principal
from coordinator.billing import exchange as market
from coordinator.web.pages.base import PageRoute, render, runtime_of, signed_in
from coordinator.web.pages.charts import line_chart
from coordinator.workloads import service as workloads

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/cargo")
async def cargo_page(request: Request, _: Principal = Depends(signed_in)) -> HTMLResponse:
    async with runtime_of(request).db.read() as session:
        items = await workloads.list_workloads(session)
        rates = {r["workload_slug"]: r for r in await market.current_rates(session)}
    return render(request, "cargo.html", {"items": items, "rates": rates})


@router.get("/exchange")
async def exchange_page(
    request: Request,
    cargo: str | None = Query(None, max_length=100),
    period: str = Query("24h", max_length=10),
    _: Principal = Depends(signed_in),
) -> HTMLResponse:
    runtime = runtime_of(request)
    async with runtime.db.read() as session:
        rates = await market.current_rates(session)
        slug = cargo or (rates[0]["workload_slug"] if rates else None)
        history = await market.history(session, slug, period) if slug else []
        surge = await runtime.surge.current(session)
    points = [(h["timestamp"][11:16], h["clearing_price"] or h["avg_price"] or 0.0) for h in history]
    context = {
        "rates": rates,
        "slug": slug,
        "period": period,
        "periods": list(market.HISTORY_PERIODS),
        "chart": line_chart(points, f"Clearing price of {slug}, {period}"),
        "surge": surge,
        "surging": surge > 1,
        "history": history,
    }
    return render(request, "exchange.html", context)
