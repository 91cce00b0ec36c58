"""The Phoenix V2 socket layer: frame codec (pure), and bad input over a real socket — error replies or a
close with a reason, each counted in `coordinator_channel_rejected_frames_total`, never a crash."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import websockets
from prometheus_client import REGISTRY

from coordinator.web.channels import protocol as wire
from tests.stream_support import Stack, stream_stack


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("coordinator_channel_rejected_frames_total", {"reason": reason})
    return value or 0.0


# ---------------------------------------------------------------- codec


def test_decode_reads_a_v2_frame_and_numeric_refs() -> None:
    frame = wire.decode('["1","2","job:x","phx_join",{"after_seq":3}]')
    assert frame == wire.Frame("1", "2", "job:x", "phx_join", {"after_seq": 3})
    assert wire.decode('[null,7,"phoenix","heartbeat",{}]').ref == "7"


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "{}",
        "[1,2,3]",
        '[null,null,"",  "e",{}]',
        '[null,null,"t",5,{}]',
        '[true,null,"t","e",{}]',
    ],
)
def test_decode_refuses_what_is_not_a_frame(raw: str) -> None:
    with pytest.raises(wire.FrameError) as err:
        wire.decode(raw)
    assert err.value.reason == wire.MALFORMED and err.value.frame is None


def test_a_non_object_payload_is_malformed_but_answerable() -> None:
    with pytest.raises(wire.FrameError) as err:
        wire.decode('["1","2","job:x","cancel",[1]]')
    assert err.value.frame is not None and err.value.frame.ref == "2"


def test_oversized_frames_are_refused_before_parsing() -> None:
    with pytest.raises(wire.FrameError) as err:
        wire.decode(b" " * (wire.MAX_FRAME_BYTES + 1))
    assert err.value.reason == wire.TOO_LARGE


def test_encodings_match_phoenix() -> None:
    frame = wire.Frame("1", "5", "job:x", "cancel", {})
    assert json.loads(wire.reply(frame, "ok", {"a": 1})) == [
        "1",
        "5",
        "job:x",
        "phx_reply",
        {"status": "ok", "response": {"a": 1}},
    ]
    assert json.loads(wire.encode_raw("1", "job:x", "token", '{"type":"token","seq":1}')) == [
        "1",
        None,
        "job:x",
        "token",
        {"type": "token", "seq": 1},
    ]
    assert json.loads(wire.channel_close("1", "t")) == ["1", "1", "t", "phx_close", {}]
    assert json.loads(wire.channel_error("1", "t")) == ["1", "1", "t", "phx_error", {}]


# ---------------------------------------------------------------- a real socket


@pytest_asyncio.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with stream_stack(database_url) as s:
        yield s


def url(stack: Stack, token: str | None = None) -> str:
    base = stack.runtime.base_url.replace("http://", "ws://")
    return f"{base}/socket/websocket?vsn=2.0.0&token={token or stack.consumer.key}"


async def roundtrip(ws: Any, frame: list[Any]) -> list[Any]:
    await ws.send(json.dumps(frame))
    while True:
        answer = json.loads(await ws.recv())
        if answer[1] == frame[1]:
            return answer  # type: ignore[no-any-return]


async def test_heartbeats_are_answered(stack: Stack) -> None:
    async with websockets.connect(url(stack)) as ws:
        answer = await roundtrip(ws, [None, "1", "phoenix", "heartbeat", {}])
        assert answer == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_a_missing_or_bad_token_is_a_403_upgrade(stack: Stack) -> None:
    for token in ("ak_wrong", "dt_wrong", "session-wrong"):
        with pytest.raises(websockets.InvalidStatus) as err:
            async with websockets.connect(url(stack, token)):
                pass
        assert err.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            stack.runtime.base_url.replace("http://", "ws://") + "/socket/websocket"
        ):
            pass


async def test_unknown_topics_and_pushes_to_unjoined_channels_get_error_replies(stack: Stack) -> None:
    unknown, unjoined = rejected("unknown_topic"), rejected("unmatched_topic")
    async with websockets.connect(url(stack)) as ws:
        answer = await roundtrip(ws, ["1", "1", "nope:1", "phx_join", {}])
        assert answer[3:] == ["phx_reply", {"status": "error", "response": {"reason": "unknown_topic"}}]
        answer = await roundtrip(ws, ["2", "2", "job:abc", "cancel", {}])
        assert answer[3:] == ["phx_reply", {"status": "error", "response": {"reason": "unmatched_topic"}}]
        assert (await roundtrip(ws, [None, "3", "phoenix", "heartbeat", {}]))[4]["status"] == "ok"  # still up
    assert rejected("unknown_topic") == unknown + 1
    assert rejected("unmatched_topic") == unjoined + 1


async def test_an_unknown_event_on_a_joined_channel_is_refused(stack: Stack) -> None:
    async with websockets.connect(url(stack)) as ws:
        topic = f"user:{stack.consumer.user.id}"
        assert (await roundtrip(ws, ["1", "1", topic, "phx_join", {}]))[4]["status"] == "ok"
        answer = await roundtrip(ws, ["1", "2", topic, "launch", {}])
        assert answer[4] == {"status": "error", "response": {"reason": "unknown_event"}}


async def test_a_malformed_frame_closes_the_socket_with_a_reason(stack: Stack) -> None:
    before = rejected("malformed")
    async with websockets.connect(url(stack)) as ws:
        await ws.send("this is not a frame")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001 and closed.value.rcvd.reason == "malformed frame"
    assert rejected("malformed") == before + 1


async def test_a_non_object_payload_gets_an_error_reply_and_the_socket_stays(stack: Stack) -> None:
    async with websockets.connect(url(stack)) as ws:
        answer = await roundtrip(ws, ["1", "9", "job:x", "phx_join", [1, 2]])
        assert answer[4] == {"status": "error", "response": {"reason": "malformed"}}
        assert (await roundtrip(ws, [None, "10", "phoenix", "heartbeat", {}]))[4]["status"] == "ok"


async def test_a_frame_over_8_mib_closes_the_socket_as_too_big(stack: Stack) -> None:
    before = rejected("too_large")
    async with websockets.connect(url(stack), max_size=None) as ws:
        await ws.send(json.dumps(["1", "1", "job:x", "phx_join", {"pad": "x" * (8 * 1024 * 1024)}]))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert rejected("too_large") == before + 1


async def test_a_silent_socket_is_closed(database_url: str) -> None:
    async with stream_stack(database_url, channel_idle_timeout_seconds=0.3) as stack:
        async with websockets.connect(url(stack)) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.reason == "heartbeat timeout"
