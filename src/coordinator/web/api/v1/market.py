"""The exchange over HTTP: public market rates and history; saved bids and Island asking prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field

from coordinator.accounts.service import Principal, parse_uuid
from coordinator.billing import exchange as market
from coordinator.web import schemas
from coordinator.web.auth import get_runtime, require_read, require_write
from coordinator.web.errors import error_responses
from coordinator.web.routing import ApiRouter

router = ApiRouter(tags=["market"])


class BidIn(BaseModel):
    workload: str = Field(min_length=1, max_length=100)
    bid: Decimal = Field(gt=0, le=Decimal("1e12"), allow_inf_nan=False)


class AskingPricesIn(BaseModel):
    host_id: str = Field(min_length=1, max_length=100)
    prices: dict[str, Decimal | str] = Field(max_length=500)


@router.get("/api/v1/market/rates", response_model=schemas.MarketRates)
async def rates(request: Request) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        return {"data": await market.current_rates(session)}


@router.get("/api/v1/market/rates/{slug}", response_model=schemas.MarketRates, responses=error_responses(404))
async def rates_for(slug: str, request: Request) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        return {"data": await market.current_rates(session, slug)}


@router.get(
    "/api/v1/market/history/{slug}", response_model=schemas.MarketRates, responses=error_responses(404, 422)
)
async def history(slug: str, request: Request, period: str = Query("24h", max_length=10)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        return {"data": await market.history(session, slug, period)}


@router.get("/api/v1/market/bids", response_model=schemas.BidList, responses=error_responses(401, 403, 429))
async def list_bids(request: Request, principal: Principal = Depends(require_read)) -> dict[str, Any]:
    async with get_runtime(request).db.session() as session:
        return {"data": await market.list_bids(session, principal.user.id)}


BID_ROUTE: dict[str, Any] = {
    "response_model": schemas.BidResponse,
    "responses": error_responses(401, 403, 422, 429),
}


@router.put("/api/v1/market/bids", **BID_ROUTE)
@router.post("/api/v1/market/bids", **BID_ROUTE)
async def save_bid(
    body: BidIn, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    async with get_runtime(request).db.transaction() as session:
        return {"data": await market.save_bid(session, principal.user.id, body.workload, body.bid)}


@router.post(
    "/api/v1/market/asking-prices",
    response_model=schemas.AskingPricesResponse,
    responses=error_responses(401, 403, 404, 422, 429),
)
async def set_asking_prices(
    body: AskingPricesIn, request: Request, principal: Principal = Depends(require_write)
) -> dict[str, Any]:
    host_id = parse_uuid(body.host_id, "Island")
    async with get_runtime(request).db.transaction() as session:
        prices = await market.set_asking_prices(session, principal.user.id, host_id, body.prices)
    return {"data": {"host_id": str(host_id), "asking_prices": prices}}
