"""Pure rules of registry submissions: the table of allowed moves, publisher tiers, spec validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from coordinator.workloads.rules import RUNTIMES

DRAFT, SUBMITTED, SCANNING, IN_REVIEW = "draft", "submitted", "scanning", "in_review"
APPROVED, PUBLISHED, REJECTED, CHANGES_REQUESTED = "approved", "published", "rejected", "changes_requested"
STATUSES = (DRAFT, SUBMITTED, SCANNING, IN_REVIEW, APPROVED, PUBLISHED, REJECTED, CHANGES_REQUESTED)
EDITABLE = (DRAFT, CHANGES_REQUESTED)


@dataclass(frozen=True)
class Move:
    """One legal move of a submission: from which states, to which, and who may make it."""

    name: str
    from_states: tuple[str, ...]
    to_state: str
    actor: str  # publisher, admin, system


# Every move of a submission, in one place (applied by one guarded UPDATE in `registry.transition`).
MOVES: dict[str, Move] = {
    move.name: move
    for move in (
        Move("submit", (DRAFT, CHANGES_REQUESTED), SUBMITTED, "publisher"),
        Move("start_scan", (SUBMITTED,), SCANNING, "system"),
        Move("scan_finished", (SCANNING,), IN_REVIEW, "system"),
        Move("scan_failed", (SCANNING,), CHANGES_REQUESTED, "system"),
        # A scan whose worker died mid-way goes back to the queue (the backstop sweep).
        Move("retry_scan", (SCANNING,), SUBMITTED, "system"),
        Move("approve", (IN_REVIEW,), APPROVED, "admin"),
        Move("request_changes", (IN_REVIEW,), CHANGES_REQUESTED, "admin"),
        Move("reject", (SUBMITTED, IN_REVIEW, CHANGES_REQUESTED), REJECTED, "admin"),
        Move("publish", (APPROVED,), PUBLISHED, "system"),
    )
}

# Publisher tiers (domain-rules): how many Cargos each may publish (None: unlimited or custom).
TIER_LIMITS: dict[str, int | None] = {"individual": 3, "verified": 10, "organization": None, "partner": None}
TIERS = tuple(TIER_LIMITS)
# Organization publishers may set jobs up to 30 minutes (domain-rules, Jobs).
ORGANIZATION_MAX_DURATION = 30 * 60

CATEGORIES = ("chat", "image", "audio", "classification", "embedding", "code", "data", "utility", "other")
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,49}$")


def cargo_limit(tier: str, custom: int | None) -> int | None:
    """How many distinct Cargos a publisher of this tier may hold (None: no limit)."""
    if custom is not None:
        return custom
    return TIER_LIMITS.get(tier, TIER_LIMITS["individual"])


def split_image(reference: str) -> tuple[str, str | None]:
    """`registry/repo[:tag][@sha256:…]` → (`registry/repo`, digest or None); a tag is dropped."""
    name, _, digest = reference.partition("@")
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    return name, (digest or None)


def _int_field(spec: dict[str, Any], key: str, errors: dict[str, list[str]], high: int) -> None:
    value = spec.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        errors[key] = [f"must be an integer from 0 to {high}"]


def validate_spec(spec: dict[str, Any], *, complete: bool) -> dict[str, list[str]]:
    """Field errors of a submission's Cargo spec; `complete` also requires what a scan needs."""
    errors: dict[str, list[str]] = {}
    runtime = spec.get("runtime", "container")
    if runtime not in RUNTIMES:
        errors["runtime"] = [f"must be one of {', '.join(RUNTIMES)}"]
    category = spec.get("category")
    if category is not None and category not in CATEGORIES:
        errors["category"] = [f"must be one of {', '.join(CATEGORIES)}"]
    for key in ("description", "changelog"):
        if spec.get(key) is not None and not isinstance(spec.get(key), str):
            errors[key] = ["must be a string"]
    image, digest = spec.get("image"), spec.get("image_digest")
    if image is not None and not (isinstance(image, str) and 0 < len(image) <= 400):
        errors["image"] = ["must be an image reference (registry/repository)"]
    elif isinstance(image, str) and split_image(image)[1] is not None:
        inline = split_image(image)[1]
        if digest is not None and digest != inline:
            errors["image_digest"] = ["does not match the digest in the image reference"]
        digest = inline
    if digest is not None and not (isinstance(digest, str) and DIGEST.match(digest)):
        errors["image_digest"] = ["must be sha256: followed by 64 lowercase hex digits"]
    wasm_hash = spec.get("wasm_hash")
    if wasm_hash is not None and not (isinstance(wasm_hash, str) and DIGEST.match(wasm_hash)):
        errors["wasm_hash"] = ["must be sha256: followed by 64 lowercase hex digits"]
    schema = spec.get("input_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            errors["input_schema"] = ["must be a JSON Schema object"]
        else:
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                errors["input_schema"] = [f"is not a valid JSON Schema: {exc.message}"]
    _int_field(spec, "required_ram_mb", errors, 1_048_576)
    _int_field(spec, "required_vram_mb", errors, 1_048_576)
    _int_field(spec, "required_cpu_cores", errors, 1024)
    _int_field(spec, "max_duration_seconds", errors, ORGANIZATION_MAX_DURATION)
    runtimes = spec.get("runtimes", [])
    if not isinstance(runtimes, list) or any(r not in RUNTIMES for r in runtimes):
        errors["runtimes"] = [f"must be a list of {', '.join(RUNTIMES)}"]
    try:
        price = Decimal(str(spec.get("price_per_job", "1")))
        if not (Decimal(0) <= price <= Decimal(1_000_000)) or price.is_nan():
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        errors["price_per_job"] = ["must be a number from 0 to 1000000"]
    if complete:
        if runtime == "wasm":
            if not spec.get("wasm_url"):
                errors.setdefault("wasm_url", []).append("is required for a wasm Cargo")
            if not wasm_hash:
                errors.setdefault("wasm_hash", []).append("is required: a module is pinned by its hash")
        elif not image:
            errors.setdefault("image", []).append("is required")
        elif not digest:
            errors.setdefault("image_digest", []).append("is required: images are referenced by digest")
    return errors


def image_of(spec: dict[str, Any]) -> tuple[str, str] | None:
    """(repository reference, digest) of a spec's image, or None for a Cargo without one."""
    image = spec.get("image")
    if not isinstance(image, str):
        return None
    name, inline = split_image(image)
    digest = inline or spec.get("image_digest")
    return (name, str(digest)) if digest else None
