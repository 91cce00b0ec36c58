"""Pure rules of the Cargo catalog: public runtime names, sandbox tiers, limits and input validation."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

RUNTIMES = ("container", "wasm", "llmcpp", "onnx", "diffusers", "coreml")
TRUST_LEVELS = {0: "sandbox", 1: "community", 2: "verified", 3: "official"}
SANDBOX_TIER_BY_TRUST = {0: "restricted", 1: "standard", 2: "standard", 3: "elevated"}
MAX_DURATION_BY_TRUST = {0: 60, 1: 300, 2: 300, 3: 600}


def public_runtime_type(runtime: str) -> str:
    """The Python SDK accepts only `container` and `wasm`; native runtimes show as container."""
    return "wasm" if runtime == "wasm" else "container"


def sandbox_tier(trust_level: int) -> str:
    return SANDBOX_TIER_BY_TRUST.get(trust_level, "restricted")


def max_duration_seconds(trust_level: int, override: int | None) -> int:
    return override if override else MAX_DURATION_BY_TRUST.get(trust_level, 60)


def validate_input(schema: dict[str, Any] | None, value: Any) -> dict[str, list[str]]:
    """Check a job input against a Cargo's JSON Schema; returns a field map ("input.prompt" → messages)."""
    errors: dict[str, list[str]] = {}
    if not isinstance(value, dict):
        return {"input": ["must be an object"]}
    if not schema:
        return errors
    for err in Draft202012Validator(schema).iter_errors(value):
        if err.validator == "anyOf" and not err.absolute_path:
            # e.g. chat accepts `prompt` or `messages`: name the first alternative's missing fields.
            first = next((alt for alt in err.validator_value if "required" in alt), None)
            for name in (first or {}).get("required", []):
                if name not in value:
                    errors.setdefault(f"input.{name}", []).append("is required")
            if first:
                continue
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "?"
            path = ".".join(["input", *[str(p) for p in err.absolute_path], missing])
            errors.setdefault(path, []).append("is required")
        else:
            path = ".".join(["input", *[str(p) for p in err.absolute_path]])
            errors.setdefault(path, []).append(err.message)
    return errors
