"""The Phoenix V2 JSON wire format (`vsn=2.0.0`): `[join_ref, ref, topic, event, payload]` frames.

Pure functions only (no I/O): decoding a client frame with the reason it is refused, and encoding the
server's replies, pushes, errors and closes exactly as Phoenix's own `V2.JSONSerializer` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# A frame's payload may be at most this large (the socket refuses bigger frames with a reason).
MAX_FRAME_BYTES = 8 * 1024 * 1024
VSN = "2.0.0"

PHOENIX_TOPIC = "phoenix"
HEARTBEAT = "heartbeat"
JOIN = "phx_join"
LEAVE = "phx_leave"
REPLY = "phx_reply"
ERROR = "phx_error"
CLOSE = "phx_close"

# Why a frame or push was refused: the `reason` of an error reply, and the metric label.
MALFORMED = "malformed"
TOO_LARGE = "too_large"
UNKNOWN_TOPIC = "unknown_topic"
NOT_JOINED = "unmatched_topic"  # Phoenix's own reason for a push to a topic not joined
UNKNOWN_EVENT = "unknown_event"
INVALID = "invalid"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
ALREADY_JOINED = "already_joined"


class FrameError(Exception):
    """A frame that cannot be handled; `reason` is the wire reason, `frame` what could be read of it."""

    def __init__(self, reason: str, frame: Frame | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frame = frame


@dataclass(frozen=True, slots=True)
class Frame:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def _ref(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # some clients send numeric refs; Phoenix echoes them as given
    raise ValueError("ref")


def decode(data: str | bytes) -> Frame:
    """One client frame; FrameError(`too_large` | `malformed`) when it is not a V2 JSON frame."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(TOO_LARGE)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError(MALFORMED) from None
    if not isinstance(value, list) or len(value) != 5:
        raise FrameError(MALFORMED)
    join_ref, ref, topic, event, payload = value
    try:
        join_ref, ref = _ref(join_ref), _ref(ref)
    except ValueError:
        raise FrameError(MALFORMED) from None
    if not isinstance(topic, str) or not isinstance(event, str) or not topic or not event:
        raise FrameError(MALFORMED)
    frame = Frame(join_ref, ref, topic, event, payload)
    if not isinstance(payload, dict):
        raise FrameError(MALFORMED, frame)
    return frame


def encode(join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
    return orjson.dumps([join_ref, ref, topic, event, payload]).decode()


def encode_raw(join_ref: str | None, topic: str, event: str, payload_json: str) -> str:
    """A push whose payload is already JSON (a pub/sub event encoded once for every subscriber)."""
    head = orjson.dumps([join_ref, None, topic, event]).decode()
    return f"{head[:-1]},{payload_json}]"


def reply(frame: Frame, status: str, response: dict[str, Any] | None = None) -> str:
    """`phx_reply` to a client frame: `{"status": "ok"|"error", "response": {...}}`."""
    body = {"status": status, "response": response if response is not None else {}}
    return encode(frame.join_ref, frame.ref, frame.topic, REPLY, body)


def error_reply(frame: Frame, reason: str, **extra: Any) -> str:
    return reply(frame, "error", {"reason": reason, **extra})


def push(join_ref: str | None, topic: str, event: str, payload: dict[str, Any]) -> str:
    return encode(join_ref, None, topic, event, payload)


def channel_error(join_ref: str | None, topic: str) -> str:
    """`phx_error`: the channel's process failed (the client re-joins)."""
    return encode(join_ref, join_ref, topic, ERROR, {})


def channel_close(join_ref: str | None, topic: str) -> str:
    """`phx_close`: the server ended the channel (the client does not re-join)."""
    return encode(join_ref, join_ref, topic, CLOSE, {})


def topic_kind(topic: str) -> tuple[str, str]:
    """`"job:123"` → `("job", "123")`; a topic without a `:` has an empty subtopic."""
    kind, _, rest = topic.partition(":")
    return kind, rest
