"""Pricing of the compute exchange (pure): asking prices, hardware tiers, surge, clearing, budgets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Protocol

MONEY = Decimal("0.000001")  # the ledger's precision (NUMERIC(20, 6))
DEFAULT_ASK_KEY = "_default"

TIER_MULTIPLIERS: dict[str, Decimal] = {
    "enterprise": Decimal("2.0"),
    "high_end": Decimal("1.5"),
    "mid_range": Decimal("1.2"),
    "entry": Decimal("1.0"),
    "cpu_only": Decimal("0.5"),
}
# Data-centre and flagship GPUs (domain-rules): H100, A100, RTX 4090/5090, L40S.
_ENTERPRISE = re.compile(r"\b(h100|a100|l40s|(rtx\s*)?(4090|5090))\b", re.IGNORECASE)
# Large workstation / previous flagship cards.
_HIGH_END = re.compile(r"\b(a6000|a40|a10|l4|v100|(rtx\s*)?(3090|4080|5080|3080))\b", re.IGNORECASE)


class PricedHost(Protocol):
    """What pricing needs of an Island (a `hosts` row or the fleet's `HostView`)."""

    @property
    def gpu_model(self) -> str | None: ...
    @property
    def gpu_vram_mb(self) -> int | None: ...
    @property
    def asking_prices(self) -> Mapping[str, Any]: ...


class PricedWorkload(Protocol):
    @property
    def slug(self) -> str: ...
    @property
    def price_per_job(self) -> Decimal: ...


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY, rounding=ROUND_HALF_UP)


def hardware_tier(gpu_model: str | None, gpu_vram_mb: int | None) -> str:
    """The tier of an Island's hardware, by GPU model name first, then by VRAM."""
    model = (gpu_model or "").strip()
    vram = gpu_vram_mb or 0
    if not model and vram <= 0:
        return "cpu_only"
    if _ENTERPRISE.search(model) or vram >= 40_960:
        return "enterprise"
    if _HIGH_END.search(model) or vram >= 16_384:
        return "high_end"
    if vram >= 8_192:
        return "mid_range"
    return "entry"


def parse_price(value: Any) -> Decimal | None:
    """An asking price as sent by an Island (a string, or a number from the REST API); None if invalid."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        price = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not price.is_finite() or price < 0 or price > Decimal("1e12"):
        return None
    return money(price)


def posted_ask(prices: Mapping[str, Any], slug: str) -> Decimal | None:
    """The Island's own ask for a Cargo: its per-Cargo price, else its `_default`, else None."""
    for key in (slug, DEFAULT_ASK_KEY):
        if key in prices and (price := parse_price(prices[key])) is not None:
            return price
    return None


def asking_price(host: PricedHost, workload: PricedWorkload) -> Decimal:
    """What an Island asks for one job of a Cargo: its posted ask, else base price × hardware tier."""
    ask = posted_ask(host.asking_prices or {}, workload.slug)
    if ask is not None:
        return ask
    tier = hardware_tier(host.gpu_model, host.gpu_vram_mb)
    return money(Decimal(workload.price_per_job) * TIER_MULTIPLIERS[tier])


def surge_factor(
    queued_jobs: int, available_capacity: int, *, ratio: Decimal, multiplier: Decimal
) -> Decimal:
    """×multiplier while queued jobs exceed `ratio` × available capacity, else 1."""
    if queued_jobs > ratio * max(available_capacity, 0):
        return multiplier
    return Decimal(1)


def clearing_price(ask: Decimal, surge: Decimal) -> Decimal:
    """What the consumer pays on success: the chosen Island's ask × surge."""
    return money(ask * surge)


def market_budget(average_clearing: Decimal, markup: Decimal) -> Decimal:
    """Step three of budget resolution: the recent average clearing price with a markup, rounded up."""
    return (average_clearing * markup).quantize(MONEY, rounding=ROUND_CEILING)


def price_stats(asks: list[Decimal]) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """(avg, min, max) of a list of asks; all None when there is no supply."""
    if not asks:
        return None, None, None
    return money(sum(asks, Decimal(0)) / len(asks)), min(asks), max(asks)


def clearing_price_for(host: PricedHost, workload: PricedWorkload, surge: Decimal) -> Decimal:
    """What a job of `workload` clears at on `host` now (record it on the job at assignment)."""
    return clearing_price(asking_price(host, workload), surge)
