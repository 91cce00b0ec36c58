"""The registry over HTTP against real PostgreSQL and a real OCI registry: submissions and their moves,
tiers and limits, review, publishing and versions, trust levels, signing keys, reviews."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from coordinator.marketplace import scanning
from coordinator.runtime import Runtime
from tests import oci_support
from tests.factories import Consumer, make_consumer
from tests.oci_support import DEBIAN_12, Registry, dpkg_status, new_key, osv, write_advisories
from tests.registry_support import create_submission, submission, submit, verify_identity

oci_registry = oci_support.oci_registry


@pytest.fixture
def scan_ready(runtime: Runtime, tmp_path: Path) -> Runtime:
    """The runtime with only the built-in scanner and one critical advisory for openssl < 3.0.11-1."""
    advisories = write_advisories(
        tmp_path / "osv",
        osv("DSA-9-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.11-1"}], "CRITICAL"),
    )
    runtime.settings.registry_scanners = ["builtin"]
    runtime.settings.registry_advisory_dir = str(advisories)
    return runtime


def clean_image(registry: Registry, repo: str, marker: bytes = b"") -> str:
    files = {"etc/os-release": DEBIAN_12, "var/lib/dpkg/status": dpkg_status(("openssl", "3.0.11-1"))}
    return registry.push_image(repo, {**files, "marker": marker})


async def admin_and_publisher(runtime: Runtime) -> tuple[Consumer, Consumer]:
    admin = await make_consumer(runtime, "admin@example.com", admin=True)
    publisher = await make_consumer(runtime, "dev@example.com")
    return admin, publisher


async def test_a_submission_goes_from_draft_to_published_with_every_move_recorded(
    scan_ready: Runtime, http: httpx.AsyncClient, oci_registry: Registry
) -> None:
    runtime = scan_ready
    admin, dev = await admin_and_publisher(runtime)
    digest = clean_image(oci_registry, "acme/echo")
    image = f"{oci_registry.host}/acme/echo"
    created = await create_submission(http, dev, "acme-echo", image, digest)
    assert created["status"] == "draft" and [e["move"] for e in created["history"]] == ["create"]
    edited = await http.put(
        f"/api/v1/marketplace/submissions/{created['id']}", headers=dev.headers, json={"description": "v1"}
    )
    assert edited.status_code == 200 and edited.json()["data"]["spec"]["description"] == "v1"
    assert (await submit(http, dev, created["id"]))["status"] == "submitted"
    # Once submitted the draft is frozen, and submitting twice is refused.
    late = await http.put(
        f"/api/v1/marketplace/submissions/{created['id']}", headers=dev.headers, json={"description": "x"}
    )
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_editable"
    again = await http.post(f"/api/v1/marketplace/submissions/{created['id']}/submit", headers=dev.headers)
    assert again.status_code == 409
    result = await scanning.scan_submission(runtime, created["id"])
    assert result["status"] == "in_review" and result["max_trust_level"] == 3
    queue = (await http.get("/api/v1/admin/marketplace/queue", headers=admin.headers)).json()["data"]
    assert [s["id"] for s in queue] == [created["id"]]
    assert queue[0]["scan"]["scanners"][0]["scanner"] == "builtin"
    assert (await http.get("/api/v1/admin/marketplace/queue", headers=dev.headers)).status_code == 403
    approved = await http.post(
        f"/api/v1/admin/marketplace/submissions/{created['id']}/approve", headers=admin.headers, json={}
    )
    assert approved.status_code == 200, approved.text
    moves = [
        (e["move"], e["from_status"], e["to_status"], e["actor_id"])
        for e in approved.json()["data"]["history"]
    ]
    assert moves == [
        ("create", "new", "draft", dev.user.id),
        ("submit", "draft", "submitted", dev.user.id),
        ("start_scan", "submitted", "scanning", None),
        ("scan_finished", "scanning", "in_review", None),
        ("approve", "in_review", "approved", admin.user.id),
        ("publish", "approved", "published", admin.user.id),
    ]
    catalogue = (await http.get("/api/v1/marketplace", headers=dev.headers)).json()["data"]
    cargo = next(c for c in catalogue if c["slug"] == "acme-echo")
    assert cargo["trust_level"] == 0 and cargo["sandbox_tier"] == "restricted" and cargo["version"] == "1.0.0"
    workloads = (await http.get("/api/v1/workloads", headers=dev.headers)).json()["data"]
    listed = next(w for w in workloads if w["slug"] == "acme-echo")
    assert listed["trust_level"] == 0 and listed["sandbox_tier"] == "restricted"
    assert listed["max_duration_seconds"] == 60
    detail = (await http.get("/api/v1/marketplace/acme-echo", headers=dev.headers)).json()["data"]
    assert [v["version"] for v in detail["versions"]] == ["1.0.0"] and detail["scan"]["counts"][
        "critical"
    ] == 0
    categories = (await http.get("/api/v1/marketplace/categories", headers=dev.headers)).json()["data"]
    assert {"name": "chat", "count": 1} in categories


async def test_an_incomplete_submission_is_refused_with_its_fields_and_stays_a_draft(
    runtime: Runtime, http: httpx.AsyncClient
) -> None:
    dev = await make_consumer(runtime, "dev@example.com")
    created = await create_submission(http, dev, "nodigest", "registry.example/acme/x", None)  # type: ignore[arg-type]
    response = await http.post(f"/api/v1/marketplace/submissions/{created['id']}/submit", headers=dev.headers)
    assert response.status_code == 422
    assert response.json()["errors"] == {"image_digest": ["is required: images are referenced by digest"]}
    assert (await submission(http, dev, created["id"]))["status"] == "draft"
    bad = await http.post(
        "/api/v1/marketplace/submissions",
        headers=dev.headers,
        json={"slug": "Bad Slug", "name": "x", "image_digest": "md5:1"},
    )
    assert bad.status_code == 422 and set(bad.json()["errors"]) == {"slug", "image_digest"}
    async with runtime.db.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM workload_submissions"))).scalar() == 1


async def test_tiers_limit_cargos_and_verified_needs_kyc(runtime: Runtime, http: httpx.AsyncClient) -> None:
    dev = await make_consumer(runtime, "dev@example.com")
    other = await make_consumer(runtime, "other@example.com")
    digest = "sha256:" + "b" * 64
    for n in range(3):
        await create_submission(http, dev, f"cargo-{n}", "r.example/a/b", digest)
    fourth = await http.post(
        "/api/v1/marketplace/submissions", headers=dev.headers, json={"slug": "cargo-3", "name": "Four"}
    )
    assert fourth.status_code == 409 and fourth.json()["error"]["code"] == "cargo_limit_reached"
    # A further submission for a Cargo already held is not a new Cargo.
    await create_submission(http, dev, "cargo-0", "r.example/a/b", digest, version="1.1.0")
    upgrade = await http.put("/api/v1/marketplace/publisher", headers=dev.headers, json={"tier": "verified"})
    assert upgrade.status_code == 403
    await verify_identity(runtime, dev.user.id)
    upgrade = await http.put("/api/v1/marketplace/publisher", headers=dev.headers, json={"tier": "verified"})
    assert upgrade.status_code == 200 and upgrade.json()["data"]["cargo_limit"] == 10
    assert (await create_submission(http, dev, "cargo-3", "r.example/a/b", digest))["status"] == "draft"
    org = await http.put(
        "/api/v1/marketplace/publisher", headers=other.headers, json={"tier": "organization"}
    )
    assert org.status_code == 403
    bad_key = await http.put(
        "/api/v1/marketplace/publisher", headers=other.headers, json={"signing_public_key": "nope"}
    )
    assert bad_key.status_code == 422 and "signing_public_key" in bad_key.json()["errors"]


async def test_review_moves_need_a_reason_and_only_leave_the_right_states(
    scan_ready: Runtime, http: httpx.AsyncClient, oci_registry: Registry
) -> None:
    admin, dev = await admin_and_publisher(scan_ready)
    digest = clean_image(oci_registry, "acme/review")
    created = await create_submission(http, dev, "review-me", f"{oci_registry.host}/acme/review", digest)
    base = f"/api/v1/admin/marketplace/submissions/{created['id']}"
    early = await http.post(f"{base}/approve", headers=admin.headers, json={})
    assert early.status_code == 409 and "draft" in early.json()["error"]["message"]
    await submit(http, dev, created["id"])
    await scanning.scan_submission(scan_ready, created["id"])
    no_reason = await http.post(f"{base}/request-changes", headers=admin.headers, json={"reason": " "})
    assert no_reason.status_code == 422
    sent_back = await http.post(f"{base}/request-changes", headers=admin.headers, json={"reason": "add docs"})
    assert sent_back.json()["data"]["status"] == "changes_requested"
    assert sent_back.json()["data"]["status_reason"] == "add docs"
    # The publisher edits and resubmits; the admin then rejects for good.
    edit = await http.put(
        f"/api/v1/marketplace/submissions/{created['id']}", headers=dev.headers, json={"description": "docs"}
    )
    assert edit.status_code == 200
    await submit(http, dev, created["id"])
    await scanning.scan_submission(scan_ready, created["id"])
    rejected = await http.post(f"{base}/reject", headers=admin.headers, json={"reason": "not a fit"})
    assert rejected.json()["data"]["status"] == "rejected"
    final = await submission(http, dev, created["id"])
    assert [e["move"] for e in final["history"]][-1] == "reject" and final["history"][-1][
        "reason"
    ] == "not a fit"
    assert (await http.post(f"{base}/approve", headers=admin.headers, json={})).status_code == 409


async def test_the_catalogue_serves_the_previous_version_until_the_new_one_is_published(
    scan_ready: Runtime, http: httpx.AsyncClient, oci_registry: Registry
) -> None:
    admin, dev = await admin_and_publisher(scan_ready)
    image = f"{oci_registry.host}/acme/versions"
    first = clean_image(oci_registry, "acme/versions", b"1")
    second = clean_image(oci_registry, "acme/versions", b"2")
    for version, digest in (("1.0.0", first), ("1.1.0", second)):
        created = await create_submission(http, dev, "versioned", image, digest, version=version)
        await submit(http, dev, created["id"])
        await scanning.scan_submission(scan_ready, created["id"])
        cargo = (await http.get("/api/v1/workloads/versioned", headers=dev.headers)).json()
        if version == "1.1.0":  # in review: the catalogue still serves 1.0.0
            assert cargo["data"]["version"] == "1.0.0"
        approve = await http.post(
            f"/api/v1/admin/marketplace/submissions/{created['id']}/approve", headers=admin.headers, json={}
        )
        assert approve.status_code == 200, approve.text
    detail = (await http.get("/api/v1/marketplace/versioned", headers=dev.headers)).json()["data"]
    assert detail["version"] == "1.1.0" and [v["version"] for v in detail["versions"]] == ["1.1.0", "1.0.0"]
    async with scan_ready.db.session() as session:
        row = (
            await session.execute(text("SELECT container_image FROM workloads WHERE slug='versioned'"))
        ).one()
    assert row.container_image == f"{image}@{second}"
    duplicate = await http.post(
        "/api/v1/marketplace/submissions",
        headers=dev.headers,
        json={"slug": "versioned", "name": "V", "version": "1.1.0"},
    )
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "version_exists"
    stranger = await make_consumer(scan_ready, "stranger@example.com")
    taken = await http.post(
        "/api/v1/marketplace/submissions",
        headers=stranger.headers,
        json={"slug": "versioned", "name": "Mine"},
    )
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "slug_taken"


async def test_l2_needs_a_verified_signature_and_verified_publishers_keys_are_served(
    scan_ready: Runtime, http: httpx.AsyncClient, oci_registry: Registry
) -> None:
    admin, dev = await admin_and_publisher(scan_ready)
    key, pem = new_key()
    await verify_identity(scan_ready, dev.user.id)
    response = await http.put(
        "/api/v1/marketplace/publisher",
        headers=dev.headers,
        json={"tier": "verified", "signing_public_key": pem},
    )
    assert response.status_code == 200
    image = f"{oci_registry.host}/acme/signed-cargo"
    unsigned = clean_image(oci_registry, "acme/signed-cargo", b"unsigned")
    signed = clean_image(oci_registry, "acme/signed-cargo", b"signed")
    oci_registry.sign("acme/signed-cargo", signed, key)
    outcomes = {}
    for slug, digest in (("unsigned-cargo", unsigned), ("signed-cargo", signed)):
        created = await create_submission(http, dev, slug, image, digest)
        await submit(http, dev, created["id"])
        await scanning.scan_submission(scan_ready, created["id"])
        outcomes[slug] = await http.post(
            f"/api/v1/admin/marketplace/submissions/{created['id']}/approve",
            headers=admin.headers,
            json={"trust_level": 2},
        )
    blocked = outcomes["unsigned-cargo"]
    assert blocked.status_code == 409 and "cosign" in blocked.json()["error"]["message"]
    assert outcomes["signed-cargo"].status_code == 200, outcomes["signed-cargo"].text
    cargo = (await http.get("/api/v1/workloads/signed-cargo", headers=dev.headers)).json()["data"]
    assert cargo["trust_level"] == 2 and cargo["sandbox_tier"] == "standard" and cargo["signed"] is True
    keys = (await http.get("/api/v1/signing-keys")).json()
    assert keys == [
        {
            "key_id": f"publisher-{dev.user.id}",
            "public_key": pem,
            "algorithm": "ecdsa-p256-sha256",
            "issuer": "dev@example.com",
        }
    ]
    # L1 also needs 100 successful jobs; an admin cannot skip that.
    lower = await http.put(
        "/api/v1/admin/marketplace/signed-cargo/trust-level", headers=admin.headers, json={"trust_level": 1}
    )
    assert lower.status_code == 409 and "100" in lower.json()["error"]["message"]


async def test_only_consumers_who_ran_a_cargo_review_it(runtime: Runtime, http: httpx.AsyncClient) -> None:
    from tests.factories import seed_cargos

    await seed_cargos(runtime)
    consumer = await make_consumer(runtime, "c@example.com")
    body = {"rating": 5, "comment": "great"}
    refused = await http.post("/api/v1/marketplace/llm-chat/reviews", headers=consumer.headers, json=body)
    assert refused.status_code == 403
    async with runtime.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO jobs (id, user_id, workload_id, state, input) SELECT gen_random_uuid(), :u, id, "
                "'succeeded', '{}' FROM workloads WHERE slug = 'llm-chat'"
            ),
            {"u": consumer.user.id},
        )
    added = await http.post("/api/v1/marketplace/llm-chat/reviews", headers=consumer.headers, json=body)
    assert added.status_code == 201, added.text
    twice = await http.post("/api/v1/marketplace/llm-chat/reviews", headers=consumer.headers, json=body)
    assert twice.status_code == 409
    reviews = (await http.get("/api/v1/marketplace/llm-chat/reviews", headers=consumer.headers)).json()[
        "data"
    ]
    assert [(r["rating"], r["comment"]) for r in reviews] == [(5, "great")]
    cargo = (await http.get("/api/v1/workloads/llm-chat", headers=consumer.headers)).json()["data"]
    assert cargo["reputation"] == pytest.approx(1.05)
    invalid = await http.post(
        "/api/v1/marketplace/llm-chat/reviews", headers=consumer.headers, json={"rating": 9}
    )
    assert invalid.status_code == 422
