"""Pure Cargo rules: the public runtime names, sandbox tiers, limits and the input field map."""

from __future__ import annotations

from coordinator.workloads import rules
from coordinator.workloads.catalog import CHAT_SCHEMA, IMAGE_SCHEMA


def test_native_runtimes_show_as_container_to_the_sdks() -> None:
    assert [rules.public_runtime_type(r) for r in rules.RUNTIMES] == [
        "container",
        "wasm",
        "container",
        "container",
        "container",
        "container",
    ]


def test_sandbox_tier_and_maximum_duration_follow_the_trust_level() -> None:
    assert [rules.sandbox_tier(level) for level in range(4)] == [
        "restricted",
        "standard",
        "standard",
        "elevated",
    ]
    assert [rules.max_duration_seconds(level, None) for level in range(4)] == [60, 300, 300, 600]
    assert rules.max_duration_seconds(3, 1800) == 1800


def test_input_errors_are_a_field_map() -> None:
    assert rules.validate_input(CHAT_SCHEMA, {"prompt": "hi", "max_tokens": 10}) == {}
    assert rules.validate_input(CHAT_SCHEMA, {"messages": [{"role": "user", "content": "hi"}]}) == {}
    assert rules.validate_input(CHAT_SCHEMA, {"nope": 1}) == {"input.prompt": ["is required"]}
    assert rules.validate_input(IMAGE_SCHEMA, {"width": 1024}) == {"input.prompt": ["is required"]}
    wrong = rules.validate_input(CHAT_SCHEMA, {"prompt": "hi", "max_tokens": "a"})
    assert list(wrong) == ["input.max_tokens"]
    assert rules.validate_input(CHAT_SCHEMA, ["not", "an", "object"]) == {"input": ["must be an object"]}
