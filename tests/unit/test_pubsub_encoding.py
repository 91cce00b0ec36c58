"""The one event encoding (`pubsub.dumps`): compact, raw UTF-8, and what orjson refuses still encoded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coordinator.pubsub import Event, dumps


def stdlib(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "token", "content": "tok1 "},
        {"type": "token", "content": 'é ✓ \u2028 "quoted" \\ \n tab\t'},
        {"type": "done", "usage": {"prompt_tokens": 12, "completion_tokens": 20, "credits_used": 0.95}},
        {"type": "status", "status": "running", "nested": [1, 2.5, None, True, {"k": []}]},
        {"type": "error", "error": ""},
    ],
)
def test_events_encode_as_the_compact_standard_form(payload: dict[str, Any]) -> None:
    assert dumps(payload) == stdlib(payload)
    assert json.loads(Event.make("job:x", 1, payload).encoded) == payload


def test_what_orjson_refuses_is_encoded_by_the_standard_library() -> None:
    big = {"type": "done", "usage": {"completion_tokens": 10**20}}
    keyed = {1: "a", "b": 2}
    assert dumps(big) == stdlib(big) == '{"type":"done","usage":{"completion_tokens":100000000000000000000}}'
    assert dumps(keyed) == stdlib(keyed) == '{"1":"a","b":2}'
