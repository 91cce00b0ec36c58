"""Pricing rules of the exchange: hardware tiers, posted asks, surge and its 30 s cache, clearing, budgets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from coordinator.billing import exchange_rules as rules
from coordinator.billing.exchange import TtlCache


@dataclass
class Host:
    gpu_model: str | None = None
    gpu_vram_mb: int | None = None
    asking_prices: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cargo:
    slug: str = "llm-chat"
    price_per_job: Decimal = Decimal(10)


@pytest.mark.parametrize(
    ("gpu", "vram", "tier"),
    [
        ("NVIDIA H100 80GB HBM3", 81_920, "enterprise"),
        ("NVIDIA A100-SXM4-40GB", 40_960, "enterprise"),
        ("NVIDIA GeForce RTX 4090", 24_576, "enterprise"),
        ("NVIDIA GeForce RTX 5090", 32_768, "enterprise"),
        ("NVIDIA L40S", 46_068, "enterprise"),
        ("NVIDIA GeForce RTX 3090", 24_576, "high_end"),
        ("NVIDIA RTX A6000", 49_140, "enterprise"),  # 48 GB of VRAM is data-centre class
        ("AMD Radeon RX 7800 XT", 16_384, "high_end"),
        ("NVIDIA GeForce RTX 3060", 12_288, "mid_range"),
        ("NVIDIA GeForce GTX 1650", 4_096, "entry"),
        ("NVIDIA A10", 24_576, "high_end"),  # not an A100
        (None, None, "cpu_only"),
        ("", 0, "cpu_only"),
    ],
)
def test_hardware_tiers(gpu: str | None, vram: int | None, tier: str) -> None:
    assert rules.hardware_tier(gpu, vram) == tier


def test_posted_ask_wins_then_default_then_tier() -> None:
    cargo = Cargo()
    assert rules.asking_price(
        Host("RTX 4090", 24_576, {"llm-chat": "3.5", "_default": "9"}), cargo
    ) == Decimal("3.5")
    assert rules.asking_price(Host("RTX 4090", 24_576, {"other": "1", "_default": "9"}), cargo) == 9
    assert rules.asking_price(Host("RTX 4090", 24_576), cargo) == 20  # enterprise ×2.0
    assert rules.asking_price(Host("RTX 3060", 12_288), cargo) == 12  # mid_range ×1.2
    assert rules.asking_price(Host(None, None), cargo) == 5  # cpu_only ×0.5
    # unusable asks fall through instead of pricing the Island at zero or failing
    assert rules.asking_price(Host("GTX 1650", 4_096, {"llm-chat": "abc", "_default": "-1"}), cargo) == 10


def test_surge_applies_only_when_queue_exceeds_twice_capacity() -> None:
    kw = {"ratio": Decimal(2), "multiplier": Decimal("1.25")}
    assert rules.surge_factor(20, 10, **kw) == 1
    assert rules.surge_factor(21, 10, **kw) == Decimal("1.25")
    assert rules.surge_factor(1, 0, **kw) == Decimal("1.25")
    assert rules.surge_factor(0, 0, **kw) == 1
    assert rules.clearing_price(Decimal(8), Decimal("1.25")) == 10


def test_market_budget_rounds_up_with_markup() -> None:
    assert rules.market_budget(Decimal(10), Decimal("1.05")) == Decimal("10.5")
    assert rules.market_budget(Decimal("0.0000011"), Decimal("1.05")) == Decimal("0.000002")


async def test_surge_cache_recomputes_after_ttl_only() -> None:
    now = [100.0]
    values = iter([Decimal(1), Decimal("1.25")])
    calls = 0

    async def compute() -> Decimal:
        nonlocal calls
        calls += 1
        return next(values)

    cache = TtlCache[Decimal](ttl=30, clock=lambda: now[0])
    assert await cache.get(compute) == 1
    now[0] += 29.9
    assert await cache.get(compute) == 1 and calls == 1
    now[0] += 0.1
    assert await cache.get(compute) == Decimal("1.25") and calls == 2


async def test_market_rates_are_cached_per_cargo() -> None:
    now = [0.0]
    computed: list[int] = []

    def rate_of(workload_id: int) -> Callable[[], Awaitable[Decimal]]:
        async def compute() -> Decimal:
            computed.append(workload_id)
            return Decimal(workload_id)

        return compute

    cache = TtlCache[Decimal](ttl=10, clock=lambda: now[0])
    assert await cache.get(rate_of(1), 1) == 1 and await cache.get(rate_of(2), 2) == 2
    now[0] += 9
    assert await cache.get(rate_of(1), 1) == 1 and computed == [1, 2]
    now[0] += 1
    assert await cache.get(rate_of(2), 2) == 2 and computed == [1, 2, 2]


def test_clearing_price_for_an_island_is_its_ask_times_surge() -> None:
    assert rules.clearing_price_for(
        Host(asking_prices={"llm-chat": "2"}), Cargo(), Decimal("1.25")
    ) == Decimal("2.5")
    assert rules.clearing_price_for(Host("NVIDIA H100", 81_920), Cargo(), Decimal(1)) == 20
