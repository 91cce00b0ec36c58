"""Verification providers: the built-in one (the user states a name and country, an admin decides) and Stripe
Identity (a hosted document check, decided by Stripe and reported through a signed webhook)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.config import Settings
from coordinator.errors import DomainError
from coordinator.verification.rules import STRIPE_USER_METADATA


class ProviderUnavailable(DomainError):
    """The provider failed or refused; nothing was recorded, the user can try again."""

    status_code = 502
    code = "verification_provider_error"


class InvalidWebhook(DomainError):
    """A webhook whose signature is missing, forged or older than the tolerance: refused, nothing applied."""

    status_code = 400
    code = "invalid_signature"


@dataclass(frozen=True)
class StartedSession:
    """What the `/verify` page needs to send the user to the provider (not stored)."""

    ref: str | None  # the provider's reference, stored on the attempt
    client_secret: str | None = None
    url: str | None = None


class VerificationProvider(Protocol):
    name: str

    async def start(self, user_id: int, idempotency_key: str) -> StartedSession:
        """Open a verification for the user at the provider."""
        ...


class BuiltinProvider:
    """An admin reviews the stated name and country on the verification queue; nothing leaves the process."""

    name = "builtin"

    async def start(self, user_id: int, idempotency_key: str) -> StartedSession:
        return StartedSession(ref=None)


class StripeIdentityProvider:
    """Stripe Identity through the `stripe` SDK (any API base: the real one, or a local fake in tests)."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        *,
        api_base: str | None = None,
        tolerance_seconds: int = 300,
        return_url: str | None = None,
    ) -> None:
        import stripe

        self.client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else None, max_network_retries=2
        )
        self.webhook_secret = webhook_secret
        self.tolerance_seconds = tolerance_seconds
        self.return_url = return_url

    def _create(self, user_id: int, idempotency_key: str) -> Any:
        params: dict[str, Any] = {
            "type": "document",
            "client_reference_id": str(user_id),
            "metadata": {STRIPE_USER_METADATA: str(user_id)},
        }
        if self.return_url:
            params["return_url"] = self.return_url
        return self.client.v1.identity.verification_sessions.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key},
        )

    async def start(self, user_id: int, idempotency_key: str) -> StartedSession:
        import stripe

        try:
            session = await asyncio.to_thread(self._create, user_id, idempotency_key)
        except stripe.StripeError as exc:
            raise ProviderUnavailable(
                f"Stripe Identity refused or failed: {exc.user_message or exc}"
            ) from exc
        return StartedSession(ref=str(session.id), client_secret=session.client_secret, url=session.url)

    def _retrieve(self, session_id: str) -> dict[str, Any]:
        session = self.client.v1.identity.verification_sessions.retrieve(
            session_id, params={"expand": ["verified_outputs", "last_verification_report"]}
        )
        return session.to_dict()

    async def retrieve_verified(self, session_id: str) -> dict[str, Any]:
        """The session with its verified outputs and last report: where the name and issuing country are
        (the webhook's copy of the session carries neither)."""
        import stripe

        try:
            return await asyncio.to_thread(self._retrieve, session_id)
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe Identity could not be read: {exc}") from exc

    def parse_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Check the `Stripe-Signature` header (HMAC-SHA256 with the webhook secret, timestamp within the
        tolerance) and return the event; anything else is an `InvalidWebhook`."""
        import stripe

        if not signature:
            raise InvalidWebhook("Missing Stripe-Signature header")
        try:
            event = self.client.construct_event(
                payload, signature, self.webhook_secret, tolerance=self.tolerance_seconds
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(f"Invalid Stripe signature: {exc.user_message or exc}") from exc
        except ValueError as exc:
            raise InvalidWebhook("The webhook body is not a Stripe event") from exc
        return event.to_dict()


def provider_from_settings(settings: Settings) -> VerificationProvider:
    """Stripe Identity when `COORDINATOR_VERIFICATION_PROVIDER=stripe` (settings refuse it without a key and
    webhook secret), the built-in reviewer otherwise."""
    if settings.verification_provider == "stripe":
        assert settings.stripe_api_key and settings.stripe_identity_webhook_secret
        return StripeIdentityProvider(
            settings.stripe_api_key,
            settings.stripe_identity_webhook_secret,
            api_base=settings.stripe_api_base,
            tolerance_seconds=settings.stripe_identity_webhook_tolerance_seconds,
            return_url=settings.stripe_identity_return_url
            or (f"{settings.public_url.rstrip('/')}/verify" if settings.public_url else None),
        )
    return BuiltinProvider()
