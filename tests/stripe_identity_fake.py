"""A local fake of Stripe Identity's HTTP API (VerificationSession create and retrieve), served by uvicorn on
a free port, and a webhook sender that signs its deliveries the way Stripe does (`Stripe-Signature`)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from coordinator.devstack import free_port

WEBHOOK_SECRET = "whsec_test_identity"

# What a verified session's expanded outputs and report hold at Stripe: far more than the coordinator may
# keep. The tests check that none of these values reaches the database.
SENSITIVE = {
    "dob": {"day": 10, "month": 12, "year": 1815},
    "id_number": "QQ123456C",
    "address": {
        "line1": "12 St James's Square",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    },
    "document_number": "533380006",
    "files": ["file_front_7f3a", "file_back_91bc"],
    "selfie": "file_selfie_55de",
}


@dataclass
class FakeStripeIdentity:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    creates: list[tuple[dict[str, str], str | None, str | None]] = field(default_factory=list)
    retrieves: list[tuple[str, list[str]]] = field(default_factory=list)
    refuse_create: bool = False

    async def create(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        key = request.headers.get("idempotency-key")
        self.creates.append((form, key, request.headers.get("authorization")))
        if self.refuse_create:
            error = {"type": "invalid_request_error", "message": "Identity is not activated on this account"}
            return JSONResponse({"error": error}, status_code=400)
        if key and key in self.by_key:
            return JSONResponse(self.sessions[self.by_key[key]])
        session_id = f"vs_{len(self.sessions) + 1}"
        metadata = {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")}
        self.sessions[session_id] = {
            "id": session_id,
            "object": "identity.verification_session",
            "type": form.get("type"),
            "status": "requires_input",
            "client_secret": f"{session_id}_secret_abc",
            "url": f"https://verify.stripe.test/start/{session_id}",
            "client_reference_id": form.get("client_reference_id"),
            "metadata": metadata,
            "last_error": None,
            "last_verification_report": None,
            "verified_outputs": None,
        }
        if key:
            self.by_key[key] = session_id
        return JSONResponse(self.sessions[session_id])

    async def retrieve(self, request: Request) -> JSONResponse:
        session_id = request.path_params["session_id"]
        expand = [v for k, v in parse_qsl(request.url.query) if k.startswith("expand")]
        self.retrieves.append((session_id, expand))
        session = self.sessions.get(session_id)
        if session is None:
            error = {
                "type": "invalid_request_error",
                "message": f"No such verification session: {session_id}",
            }
            return JSONResponse({"error": error}, status_code=404)
        answer = dict(session)
        if "verified_outputs" not in expand and session["verified_outputs"] is not None:
            answer["verified_outputs"] = None
        if "last_verification_report" not in expand and session["last_verification_report"] is not None:
            answer["last_verification_report"] = "vr_" + session_id
        return JSONResponse(answer)

    def verify(self, session_id: str, first_name: str = "Ada", last_name: str = "Lovelace") -> dict[str, Any]:
        """The user passed the document check at Stripe."""
        session = self.sessions[session_id]
        session["status"] = "verified"
        session["verified_outputs"] = {
            "first_name": first_name,
            "last_name": last_name,
            "dob": SENSITIVE["dob"],
            "id_number": SENSITIVE["id_number"],
            "address": SENSITIVE["address"],
        }
        session["last_verification_report"] = {
            "id": "vr_" + session_id,
            "object": "identity.verification_report",
            "document": {
                "status": "verified",
                "issuing_country": "GB",
                "number": SENSITIVE["document_number"],
                "dob": SENSITIVE["dob"],
                "files": SENSITIVE["files"],
                "first_name": first_name,
                "last_name": last_name,
            },
            "selfie": {"status": "verified", "selfie": SENSITIVE["selfie"]},
        }
        return self.event_object(session_id)

    def require_input(self, session_id: str, code: str, reason: str) -> dict[str, Any]:
        session = self.sessions[session_id]
        session["status"] = "requires_input"
        session["last_error"] = {"code": code, "reason": reason}
        return self.event_object(session_id)

    def event_object(self, session_id: str) -> dict[str, Any]:
        """The session as a webhook carries it (outputs and report not expanded)."""
        session = dict(self.sessions[session_id])
        session["verified_outputs"] = None
        if session["last_verification_report"] is not None:
            session["last_verification_report"] = "vr_" + session_id
        return session


@asynccontextmanager
async def fake_stripe_identity() -> AsyncIterator[tuple[FakeStripeIdentity, str]]:
    fake = FakeStripeIdentity()
    app = Starlette(
        routes=[
            Route("/v1/identity/verification_sessions", fake.create, methods=["POST"]),
            Route("/v1/identity/verification_sessions/{session_id}", fake.retrieve, methods=["GET"]),
        ]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # up to 5 s for uvicorn to bind
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def stripe_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """Stripe's scheme: v1 = HMAC-SHA256(secret, "<t>.<payload>"), sent as `t=<t>,v1=<hex>`."""
    signed = f"{timestamp}.".encode() + payload
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


@dataclass(frozen=True)
class Delivery:
    payload: bytes
    signature: str | None


class WebhookSender:
    """Builds Stripe events and posts them, signed, to the coordinator's webhook endpoint."""

    path = "/api/v1/verification/stripe/webhook"

    def __init__(self, http: httpx.AsyncClient, secret: str = WEBHOOK_SECRET) -> None:
        self.http = http
        self.secret = secret
        self.count = 0

    def event(self, kind: str, session: dict[str, Any], event_id: str | None = None) -> bytes:
        self.count += 1
        body = {
            "id": event_id or f"evt_{self.count}",
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "livemode": False,
            "type": f"identity.verification_session.{kind}",
            "data": {"object": session},
        }
        return json.dumps(body).encode()

    def sign(self, payload: bytes, *, secret: str | None = None, age: int = 0) -> Delivery:
        return Delivery(payload, stripe_signature(payload, secret or self.secret, int(time.time()) - age))

    async def deliver(self, delivery: Delivery) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if delivery.signature is not None:
            headers["Stripe-Signature"] = delivery.signature
        return await self.http.post(self.path, content=delivery.payload, headers=headers)

    async def send(self, kind: str, session: dict[str, Any], event_id: str | None = None) -> httpx.Response:
        return await self.deliver(self.sign(self.event(kind, session, event_id)))
