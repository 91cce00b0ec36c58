"""What the official clients send and how they read answers, mirrored for the interop tests.

Headers are those of archipelag-python 0.1.0 (`Client.__init__`), @archipelag/sdk 0.1.0 (`request()`,
`streamJob()`) and archipelag-cli (`ApiClient::new`). The `cli_*` checks mirror the CLI's serde structs
(`src/models.rs`): a required field must be present with its type, an `Option<T>` may be absent or null
but never of another type, `u64` is a non-negative integer and `f64` any JSON number."""

from __future__ import annotations

import json
from typing import Any


def py_headers(key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "User-Agent": "archipelag-python/0.1.0",
    }


def ts_headers(key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "User-Agent": "@archipelag/sdk/0.1.0",
    }


def ts_stream_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}


def cli_headers(key: str) -> dict[str, str]:
    # reqwest default headers; the CLI sends no Accept on its stream either.
    return {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "User-Agent": "archipelag-cli/0.2.0",
    }


def _is_u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_f64(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _opt(obj: dict[str, Any], key: str, check: Any) -> None:
    value = obj.get(key)
    assert value is None or check(value), f"{key}: {value!r} does not fit the CLI's type"


def cli_usage(usage: Any) -> None:
    assert isinstance(usage, dict)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        _opt(usage, key, _is_u64)
    _opt(usage, "credits_used", _is_f64)


def cli_job(job: Any) -> None:
    """`struct Job`: id: String, status: String required; the rest Option<…>."""
    assert isinstance(job, dict)
    assert isinstance(job.get("id"), str) and isinstance(job.get("status"), str)
    _opt(job, "workload_id", lambda v: isinstance(v, int) and not isinstance(v, bool))
    for key in ("workload_slug", "output", "error", "created_at", "started_at", "completed_at"):
        _opt(job, key, lambda v: isinstance(v, str))
    _opt(job, "duration_ms", _is_u64)
    if job.get("usage") is not None:
        cli_usage(job["usage"])


def cli_stream_event(event: Any) -> str:
    """`struct StreamEvent` (type, content, usage, error: all Option); returns what `aio jobs stream`
    prints for it: its `content`."""
    assert isinstance(event, dict)
    for key in ("type", "content", "error"):
        _opt(event, key, lambda v: isinstance(v, str))
    if event.get("usage") is not None:
        cli_usage(event["usage"])
    content = event.get("content")
    return content if isinstance(content, str) else ""


def cli_market_rate(rate: Any) -> None:
    assert isinstance(rate, dict) and isinstance(rate.get("workload_slug"), str)
    for key in ("avg_price", "min_price", "max_price"):
        _opt(rate, key, _is_f64)
    _opt(rate, "num_hosts", _is_u64)
    _opt(rate, "timestamp", lambda v: isinstance(v, str))


def sse_data(raw: str) -> list[dict[str, Any]]:
    """The JSON of every `data:` frame (the CLI's eventsource parser skips empty data and [DONE])."""
    events = []
    for block in raw.split("\n\n"):
        lines = [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
        if lines and lines[0] not in ("", "[DONE]"):
            events.append(json.loads("\n".join(lines)))
    return events
