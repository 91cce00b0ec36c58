"""Byte-exact encoding and tolerant parsing of the Island wire messages (island-protocol §4)."""

from __future__ import annotations

import pytest

from coordinator.protocol import messages as m
from coordinator.protocol.codec import ProtocolError, f32
from coordinator.protocol.subjects import host_id_from_subject, valid_host_id

HID = "9b2e4f1c-5a7d-4e3b-8c6f-1d2a3b4c5d6e"
REGISTER_GPU = (
    b'{"host_id":"9b2e4f1c-5a7d-4e3b-8c6f-1d2a3b4c5d6e","capabilities":'
    b'{"gpu_model":"NVIDIA GeForce RTX 4090","gpu_vram_mb":24564,"cpu_cores":32,"ram_mb":64215,'
    b'"region":"eu-west"},"version":"0.4.0"}'
)
REGISTER_CPU = (
    b'{"host_id":"9b2e4f1c-5a7d-4e3b-8c6f-1d2a3b4c5d6e","capabilities":{"gpu_model":null,"gpu_vram_mb":null,'
    b'"cpu_cores":8,"ram_mb":15935,"region":"auto"},"version":"0.4.0"}'
)
HEARTBEAT_CPU = (
    b'{"host_id":"9b2e4f1c-5a7d-4e3b-8c6f-1d2a3b4c5d6e","status":"online","active_jobs":1,'
    b'"timestamp":1773916800123,"agent_version":"0.4.0","system":{"cpu_percent":0.0,"memory_used_mb":6021,'
    b'"memory_total_mb":15935,"disk_used_gb":112,"disk_total_gb":468},"cache":{"cached_image_count":3,'
    b'"cached_size_mb":4211,"warm_workload_count":1,"warm_workload_ids":["42"]},"performance_estimates":'
    b'{"gpu_bandwidth_gb_s":null,"estimated_llm_tok_s":null,"max_concurrent_containers":4,'
    b'"wasm_memory_limit_mb":11951,"supported_runtimes":["container","wasm","diffusers"],"nats_rtt_ms":0.412}}'
)
HEARTBEAT_GPU = (
    b'{"host_id":"9b2e4f1c-5a7d-4e3b-8c6f-1d2a3b4c5d6e","status":"online","active_jobs":0,'
    b'"timestamp":1773916810123,"agent_version":"0.4.0","system":{"cpu_percent":0.0,"memory_used_mb":20480,'
    b'"memory_total_mb":64215,"disk_used_gb":700,"disk_total_gb":1863},"gpus":[{"index":0,'
    b'"utilization_percent":3,"memory_used_mb":512,"memory_total_mb":24564,"temperature_c":41,'
    b'"power_draw_w":28.5}],"cache":{"cached_image_count":0,"cached_size_mb":0,"warm_workload_count":0,'
    b'"warm_workload_ids":[]},"performance_estimates":{"gpu_bandwidth_gb_s":1008.0,"estimated_llm_tok_s":123.0,'
    b'"max_concurrent_containers":16,"wasm_memory_limit_mb":48161,"supported_runtimes":["container","wasm",'
    b'"diffusers"],"nats_rtt_ms":12.5},"asking_prices":{"llm-chat":"2.0","_default":"1.0"}}'
)


@pytest.mark.parametrize("raw", [REGISTER_GPU, REGISTER_CPU])
def test_register_round_trips_byte_exact(raw: bytes) -> None:
    assert m.parse_register(raw).encode() == raw


@pytest.mark.parametrize("raw", [HEARTBEAT_CPU, HEARTBEAT_GPU])
def test_heartbeat_round_trips_byte_exact(raw: bytes) -> None:
    hb = m.parse_heartbeat(raw)
    assert hb.encode() == raw


def test_heartbeat_fields() -> None:
    hb = m.parse_heartbeat(HEARTBEAT_GPU)
    assert hb.asking_prices == {"llm-chat": "2.0", "_default": "1.0"}
    assert hb.performance_estimates.max_concurrent_containers == 16
    assert hb.gpus is not None and hb.gpus[0].memory_total_mb == 24564
    assert m.parse_heartbeat(HEARTBEAT_CPU).cache.warm_workload_ids == ["42"]


def test_f32_prints_shortest_round_trip() -> None:
    assert f32(0.41200000047683716) == 0.412
    assert repr(f32(123.0)) == "123.0"
    assert f32(float("nan")) is None


def test_job_reports_encode_in_island_order() -> None:
    jid = "6f1d2c3b-0a9e-4d8c-b7a6-5e4f3d2c1b0a"
    assert m.JobStatus(jid, "started", 1773916800456).encode() == (
        b'{"job_id":"6f1d2c3b-0a9e-4d8c-b7a6-5e4f3d2c1b0a","state":"started","timestamp":1773916800456}'
    )
    failed = m.JobStatus(jid, "failed", 1773916830456, error="Container crash: General error")
    assert failed.encode().index(b'"error"') < failed.encode().index(b'"timestamp"')
    assert m.JobOutput(jid, 13, "", True).encode() == (
        b'{"job_id":"6f1d2c3b-0a9e-4d8c-b7a6-5e4f3d2c1b0a","seq":13,"chunk":"","is_final":true}'
    )
    assert (
        m.LeaseRenewal(jid).encode()
        == b'{"job_id":"6f1d2c3b-0a9e-4d8c-b7a6-5e4f3d2c1b0a","extend_seconds":60}'
    )
    assert m.parse_status(failed.encode()) == failed
    assert m.parse_status(b'{"job_id":"x","state":"completed","timestamp":1}').state == "completed"


@pytest.mark.parametrize(
    ("parser", "raw"),
    [
        (m.parse_status, b'{"job_id":1,"state":"started","timestamp":1}'),
        (m.parse_status, b'{"job_id":"a","state":"exploded","timestamp":1}'),
        (m.parse_output, b'{"job_id":"a","seq":"1","chunk":"x","is_final":false}'),
        (m.parse_output, b'{"job_id":"a","seq":-1,"chunk":"x","is_final":false}'),
        (m.parse_heartbeat, b'{"host_id":"a","asking_prices":{"x":[1]}}'),
        (m.parse_heartbeat, b"\xff\xfe"),
        (m.parse_register, b"[1,2]"),
        (m.parse_assign_job, b'{"job_id":"a","lease_expires":1}'),
        (m.parse_assign_job, b'{"job_id":"a","input":null,"lease_expires":1.7e12}'),
        (m.parse_assign_job, b'{"job_id":"a","input":null,"lease_expires":1,"runtime_type":null}'),
        (m.parse_preload, b'{"workload_slug":"x","runtime_type":"wasm","estimated_earnings_per_job":0.5}'),
    ],
)
def test_malformed_messages_raise_protocol_error(parser: object, raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parser(raw)  # type: ignore[operator]


def test_unknown_fields_are_ignored() -> None:
    out = m.parse_output(b'{"job_id":"a","seq":1,"chunk":"x","is_final":false,"extra":{"y":1}}')
    assert out == m.JobOutput("a", 1, "x", False)


def test_build_assign_job_for_container_and_wasm() -> None:
    job = m.build_assign_job(
        job_id="6f1d",
        workload_id=42,
        input={"prompt": "Hello"},
        lease_expires_ms=1773916860000,
        workload_runtime="container",
        supported_runtimes=["container", "wasm"],
        sandbox_tier="elevated",
        container_image="ghcr.io/archipelag-io/llm-chat:latest",
        wasm_url="/ignored.wasm",
    )
    assert job.encode() == (
        b'{"job_id":"6f1d","workload_id":"42","input":{"prompt":"Hello"},"lease_expires":1773916860000,'
        b'"runtime_type":"container","container_image":"ghcr.io/archipelag-io/llm-chat:latest",'
        b'"sandbox_tier":"elevated"}'
    )
    assert m.parse_assign_job(job.encode()) == job
    wasm = m.build_assign_job(
        job_id="j",
        workload_id=7,
        input={"text": "hi"},
        lease_expires_ms=1,
        workload_runtime="wasm",
        supported_runtimes=["container", "wasm"],
        sandbox_tier="standard",
        wasm_url="/cargos/text-stats.wasm",
    )
    assert wasm.runtime_type == "wasm" and wasm.container_image is None
    onnx = m.build_assign_job(
        job_id="j",
        workload_id=9,
        input={"text": "hi"},
        lease_expires_ms=1,
        workload_runtime="onnx",
        supported_runtimes=["container", "wasm", "onnx"],
        sandbox_tier="standard",
        model_url="hf://a/b",
        onnx_task_type="text-classification",
    )
    assert onnx.onnx_model_url == "hf://a/b" and onnx.model_url is None


def test_build_assign_job_refuses_unsupported_runtime_and_missing_image() -> None:
    assert m.choose_runtime_type("onnx", ["container", "wasm"]) is None
    assert m.choose_runtime_type("diffusers", ["container", "wasm", "diffusers"]) == "diffusers"
    with pytest.raises(ProtocolError):
        m.build_assign_job(
            job_id="j",
            workload_id=1,
            input={},
            lease_expires_ms=1,
            workload_runtime="onnx",
            supported_runtimes=["container", "wasm"],
            sandbox_tier="standard",
        )
    with pytest.raises(ProtocolError):
        m.build_assign_job(
            job_id="j",
            workload_id=1,
            input={},
            lease_expires_ms=1,
            workload_runtime="container",
            supported_runtimes=["container"],
            sandbox_tier="standard",
        )


def test_pairing_messages() -> None:
    assert m.PairingResponse(False, error="Island already paired").already_paired
    assert not m.PairingResponse(True, code="ABC234").already_paired
    resp = m.parse_pairing_response(b'{"success":true,"code":"ABC-123","expires_in_seconds":300}')
    assert resp.code == "ABC-123"
    with pytest.raises(ProtocolError):
        m.parse_pairing_response(b'{"code":"x"}')


def test_preload_encoding_keeps_earnings_a_string() -> None:
    rec = m.PreloadRecommendation(
        workload_slug="llm-chat", runtime_type="llmcpp", estimated_earnings_per_job="0.05"
    )
    assert m.parse_preload(rec.encode()) == rec
    assert b'"estimated_earnings_per_job":"0.05"' in rec.encode()


def test_host_ids() -> None:
    assert valid_host_id(HID)
    for bad in ("short", "abcdefgh.x", "abcdefgh*", "abcdefgh>", "abcd efgh"):
        assert not valid_host_id(bad)
    assert host_id_from_subject(f"host.{HID}.status") == HID
    assert host_id_from_subject("host.x.y.z") is None
