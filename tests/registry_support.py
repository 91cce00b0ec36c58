"""Helpers of the registry tests: publishers (with KYC), submissions driven over the HTTP API."""

from __future__ import annotations

from typing import Any

import httpx

from coordinator.runtime import Runtime
from coordinator.verification import rules
from coordinator.verification import service as verification
from coordinator.verification.providers import BuiltinProvider
from tests.factories import Consumer, make_consumer


async def verify_identity(runtime: Runtime, user_id: int) -> None:
    """A passed KYC check, through the verification service the API uses: a built-in statement of name
    and country, approved by an admin."""
    admin = await make_consumer(runtime, f"kyc-admin-{user_id}@example.com", admin=True)
    await verification.start(
        runtime.db, runtime.mailer, BuiltinProvider(), user_id, legal_name="Test Publisher", country="DE"
    )
    async with runtime.db.transaction() as session:
        await verification.decide(session, runtime.mailer, user_id, rules.APPROVE, admin_id=admin.user.id)


async def create_submission(
    http: httpx.AsyncClient, who: Consumer, slug: str, image: str, digest: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "slug": slug,
        "name": extra.pop("name", slug.title()),
        "version": extra.pop("version", "1.0.0"),
        "category": "chat",
        "description": "a test Cargo",
        "image": image,
        "image_digest": digest,
        "price_per_job": 1,
        **extra,
    }
    response = await http.post("/api/v1/marketplace/submissions", headers=who.headers, json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def submit(http: httpx.AsyncClient, who: Consumer, submission_id: int) -> dict[str, Any]:
    response = await http.post(f"/api/v1/marketplace/submissions/{submission_id}/submit", headers=who.headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def submission(http: httpx.AsyncClient, who: Consumer, submission_id: int) -> dict[str, Any]:
    response = await http.get(f"/api/v1/marketplace/submissions/{submission_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data
