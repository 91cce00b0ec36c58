"""Payout providers: how an Island owner actually gets paid. Virtual (the default in the open beta, credits
are virtual) or Stripe Connect (a transfer to the owner's connected account) when configured."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

from coordinator.config import Settings


class PayoutError(Exception):
    """The provider refused or failed. `permanent` errors fail the payout; others are retried next run."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class PayoutRequest:
    payout_id: int
    owner_id: int
    amount: Decimal  # credits (1 credit ≈ $0.01)
    account_ref: str | None  # the owner's account at the provider
    idempotency_key: str  # "payout-<id>": a retried call after a crash pays once


class PayoutProvider(Protocol):
    name: str

    async def pay(self, request: PayoutRequest) -> str:
        """Pay and return the provider's reference; the same idempotency key must return the same one."""
        ...


class VirtualProvider:
    """Virtual credits: recording the payout is the payment; the reference derives from the payout id."""

    name = "virtual"

    async def pay(self, request: PayoutRequest) -> str:
        return f"virtual-{request.payout_id}"


def credits_to_cents(amount: Decimal) -> int:
    """1 credit ≈ $0.01: whole cents, rounded down (the remainder stays owed for the next period)."""
    return int(amount.to_integral_value(rounding=ROUND_DOWN))


class StripeConnectProvider:
    """A Stripe Connect transfer to the owner's connected account, via the `stripe` SDK."""

    name = "stripe"

    def __init__(self, api_key: str, api_base: str | None = None, currency: str = "usd") -> None:
        import stripe

        self.client = stripe.StripeClient(api_key, base_addresses={"api": api_base} if api_base else None)
        self.currency = currency

    def _create(self, request: PayoutRequest) -> Any:
        return self.client.v1.transfers.create(
            params={
                "amount": credits_to_cents(request.amount),
                "currency": self.currency,
                "destination": request.account_ref or "",
                "transfer_group": f"payout-{request.payout_id}",
                "metadata": {"payout_id": str(request.payout_id), "owner_id": str(request.owner_id)},
            },
            options={"idempotency_key": request.idempotency_key},
        )

    async def pay(self, request: PayoutRequest) -> str:
        import stripe

        if not request.account_ref:
            raise PayoutError("The owner has no connected Stripe account", permanent=True)
        try:
            transfer = await asyncio.to_thread(self._create, request)
        except stripe.InvalidRequestError as exc:
            raise PayoutError(
                f"Stripe refused the transfer: {exc.user_message or exc}", permanent=True
            ) from exc
        except stripe.StripeError as exc:
            raise PayoutError(f"Stripe error: {exc}") from exc
        return str(transfer.id)


def provider_from_settings(settings: Settings) -> PayoutProvider:
    if settings.payout_provider == "stripe" and settings.stripe_api_key:
        return StripeConnectProvider(settings.stripe_api_key, settings.stripe_api_base)
    return VirtualProvider()
