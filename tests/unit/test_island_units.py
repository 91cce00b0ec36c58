"""Pure parts of the reference Island and of the hosts rules: WASM limits, PNG, runtimes, pairing codes."""

from __future__ import annotations

import random
import struct
import uuid
import zlib
from decimal import Decimal
from pathlib import Path

import wasmtime

from coordinator.hosts import rules
from coordinator.hosts.fleet import FleetView, HostView, parse_asking_prices
from coordinator.protocol import messages as m
from island.png import gradient_png
from island.runtimes import RuntimeOptions, execute_wasm, mock_classification, mock_tokens, runtime_for
from island.state import IslandState

SPIN = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))')
TEXT_STATS = wasmtime.wat2wasm(
    (Path(__file__).parents[2] / "src/coordinator/web/static/text-stats.wat").read_text()
)


def test_wasm_fuel_and_time_limits() -> None:
    code, _, timed_out = execute_wasm(SPIN, "{}", fuel=1_000_000, timeout=30)
    assert code == 1 and not timed_out  # out of fuel traps: exit code 1
    code, _, timed_out = execute_wasm(SPIN, "{}", fuel=10**15, timeout=0.3)
    assert code == 1 and timed_out


def test_text_stats_cargo_counts_words_and_code_points() -> None:
    code, out, _ = execute_wasm(TEXT_STATS, '{"text":"héllo  wide\\nworld"}', fuel=10**9, timeout=10)
    assert code == 0
    assert out == '{"type":"token","content":"{\\"words\\":3,\\"chars\\":17}"}\n{"type":"done"}\n'
    code, out, _ = execute_wasm(TEXT_STATS, '{"other":1}', fuel=10**9, timeout=10)
    assert code == 1 and '"type":"error"' in out


def test_png_is_a_valid_rgb_image() -> None:
    png = gradient_png("a lighthouse", 7, 5, 3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (width, height, depth, colour) == (5, 3, 8, 2)
    idat_len = struct.unpack(">I", png[33:37])[0]
    raw = zlib.decompress(png[41 : 41 + idat_len])
    assert len(raw) == 3 * (1 + 5 * 3)
    assert gradient_png("a lighthouse", 7, 5, 3) == png  # deterministic


def _job(**fields: object) -> m.AssignJob:
    return m.AssignJob(job_id="j", input={}, lease_expires=1, **fields)  # type: ignore[arg-type]


def test_runtime_mapping() -> None:
    options = RuntimeOptions()
    assert runtime_for(_job(runtime_type="wasm"), options) == "wasm"
    assert runtime_for(_job(runtime_type="onnx"), options) == "onnx"
    assert (
        runtime_for(_job(runtime_type="container", container_image="ghcr.io/a/llm-chat:1"), options)
        == "mock-llm"
    )
    assert (
        runtime_for(_job(runtime_type="container", container_image="ghcr.io/a/sdxl:1"), options)
        == "mock-image"
    )
    assert runtime_for(_job(runtime_type="container", container_image="other:1"), options) == "unsupported"
    options.process_command = "cat"
    assert runtime_for(_job(runtime_type="container", container_image="other:1"), options) == "process"


def test_mock_outputs_are_deterministic() -> None:
    assert mock_tokens("hi there", 10) == ["You", " said:", " hi", " there"]
    assert mock_tokens("hi there", 2) == ["You", " said:"]
    assert mock_classification("I hate this awful thing")["label"] == "LABEL_0"
    assert mock_classification("neutral words") == mock_classification("neutral words")


def test_state_file_keeps_identity_and_pairing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = IslandState.load(path)
    assert len(state.host_id) == 36 and not state.paired
    state.mark_paired(path)
    again = IslandState.load(path)
    assert again.host_id == state.host_id and again.paired and again.paired_at is not None
    path.write_text("{broken")
    assert IslandState.load(path).host_id != state.host_id  # unreadable state: a new identity


def test_pairing_codes() -> None:
    rng = random.Random(1)
    for _ in range(200):
        code = rules.new_pairing_code(rng.choice)
        assert len(code) == 6 and not set(code) & set("IO10")
        assert rules.normalize_pairing_code(code.lower()) == code
    assert rules.normalize_pairing_code("abc-234") == "ABC234"
    assert rules.normalize_pairing_code("ABC10O") is None
    assert rules.normalize_pairing_code("ABC") is None


def test_fleet_capacity_and_prices() -> None:
    now = [100.0]
    fleet = FleetView(heartbeat_timeout=30, clock=lambda: now[0])
    woken: list[int] = []
    fleet.on_capacity(lambda: woken.append(1))
    view = HostView(id=uuid.uuid4(), approved=True)
    fleet.put(view)
    beat = m.Heartbeat(
        host_id=str(view.id),
        performance_estimates=m.PerformanceEstimates(max_concurrent_containers=2),
        asking_prices={"_default": "1.5", "x": "bad"},
    )
    fleet.apply_heartbeat(view, beat)
    assert woken and fleet.available() == [view] and view.max_concurrent == 2
    assert str(view.asking_price("anything")) == "1.5"
    assert fleet.reserve(view.id) and fleet.reserve(view.id) and not fleet.reserve(view.id)
    assert fleet.available() == []
    fleet.release(view.id)
    assert fleet.available() == [view]
    now[0] += 31
    assert fleet.expire_silent() == [view.id] and fleet.available() == []
    assert parse_asking_prices({"a": "-1", "b": "NaN", "c": "0.25"}) == {"c": Decimal("0.25")}
