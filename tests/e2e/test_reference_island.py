"""The reference Island against the real coordinator and NATS: registration, batched heartbeats, and the
raw message sequences it publishes for jobs assigned through the publisher on JetStream."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest_asyncio
from sqlalchemy import text

from coordinator.protocol import messages as m
from coordinator.runtime import Runtime
from island.agent import Island, IslandConfig
from island.runtimes import RuntimeOptions
from tests.islands_support import eventually, running_coordinator


@dataclass
class Rig:
    runtime: Runtime
    island: Island
    wire: list[Any]  # raw messages on host.<id>.* as a NATS observer sees them

    def on(self, suffix: str, job_id: str | None = None) -> list[Any]:
        msgs = [msg for msg in self.wire if msg.subject == f"host.{self.island.host_id}.{suffix}"]
        if job_id is not None:
            msgs = [msg for msg in msgs if json.loads(msg.data).get("job_id") == job_id]
        return msgs

    def job_messages(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The job's reports in arrival order, without lease renewals (timing-dependent here)."""
        out = []
        for msg in self.wire:
            suffix = msg.subject.rsplit(".", 1)[1]
            if suffix in ("status", "output", "progress", "image"):
                body = json.loads(msg.data)
                if body.get("job_id") == job_id:
                    out.append((suffix, body))
        return out


@pytest_asyncio.fixture
async def rig(database_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_coordinator(database_url, nats_url) as runtime:
        config = IslandConfig(
            nats_url=nats_url,
            state_dir=tmp_path / "island",
            gpu_model="NVIDIA GeForce RTX 4090",
            gpu_vram_mb=24564,
            region="eu-west",
            heartbeat_interval=0.2,
            lease_interval=0.2,
            asking_prices={"_default": "1.0", "llm-chat": "2.0"},
            runtime=RuntimeOptions(token_rate=0, cache_dir=tmp_path / "wasm-cache"),
        )
        island = Island(config)
        observer = await nats.connect(nats_url)
        wire: list[Any] = []

        async def keep(msg: Any) -> None:
            wire.append(msg)

        await observer.subscribe(f"host.{island.host_id}.*", cb=keep)
        await observer.flush()
        await island.start()
        try:
            yield Rig(runtime, island, wire)
        finally:
            await island.stop()
            await observer.close()


def _publisher(rig: Rig) -> Any:
    return rig.runtime.components["publisher"]


async def _assign(rig: Rig, workload_runtime: str, input: Any, **fields: Any) -> str:
    job_id = str(uuid.uuid4())
    job = m.build_assign_job(
        job_id=job_id,
        workload_id=fields.pop("workload_id", 1),
        input=input,
        lease_expires_ms=1773916860000,
        workload_runtime=workload_runtime,
        supported_runtimes=["container", "wasm", "onnx"],
        sandbox_tier="standard",
        **fields,
    )
    await _publisher(rig).publish_assignment(rig.island.host_id, job, msg_id=f"{job_id}:1")
    return job_id


async def _finished(rig: Rig, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    async def done() -> Any:
        states = [b["state"] for s, b in rig.job_messages(job_id) if s == "status"]
        return (
            rig.job_messages(job_id)
            if states and states[-1] in ("succeeded", "failed", "cancelled")
            else None
        )

    result: list[tuple[str, dict[str, Any]]] = await eventually(done, within=10)
    return result


async def test_registers_heartbeats_and_pairs(rig: Rig) -> None:
    host_id = rig.island.host_id

    async def flushed() -> Any:
        async with rig.runtime.db.session() as session:
            row = (await session.execute(text("SELECT * FROM hosts WHERE id = :id"), {"id": host_id})).first()
        return row if row is not None and row.last_heartbeat is not None else None

    row = await eventually(flushed)
    assert row.gpu_model == "NVIDIA GeForce RTX 4090" and row.gpu_vram_mb == 24564 and row.region == "eu-west"
    assert row.supported_runtimes == ["container", "wasm", "onnx"]
    assert row.asking_prices == {"_default": "1.0", "llm-chat": "2.0"}
    assert row.status == "online" and row.rtt_ms is not None

    beat = rig.on("heartbeat")[0].data
    keys = list(json.loads(beat))
    assert keys == [
        "host_id",
        "status",
        "active_jobs",
        "timestamp",
        "agent_version",
        "system",
        "gpus",
        "cache",
        "performance_estimates",
        "asking_prices",
    ]
    assert m.parse_heartbeat(beat).encode() == beat  # byte-exact in the Island's own encoding
    assert rig.on("ping"), "each heartbeat is preceded by a ping request"
    code = rig.island.pairing_code
    assert code is not None and len(code) == 6
    view = rig.runtime.components["fleet"].get(uuid.UUID(host_id))
    assert view in rig.runtime.components["fleet"].available() and view.max_concurrent >= 1

    js = rig.island.nc.jetstream()
    consumer = await js.consumer_info("JOBS", f"host-{host_id}")
    assert consumer.config.max_deliver == 5 and consumer.config.ack_wait == 60
    assert consumer.config.filter_subject == f"host.{host_id}.jobs"


async def test_llm_job_sequence_and_field_order(rig: Rig) -> None:
    job_id = await _assign(
        rig,
        "container",
        {"prompt": "tell me a joke", "max_tokens": 10},
        container_image="ghcr.io/x/llm-chat:1",
    )
    seq = await _finished(rig, job_id)
    kinds = [(s, b.get("state", b.get("seq"))) for s, b in seq]
    tokens = ["You", " said:", " tell", " me", " a", " joke"]
    assert kinds == [
        ("status", "started"),
        ("status", "streaming"),
        *[("output", i) for i in range(1, len(tokens) + 1)],
        ("output", len(tokens) + 1),
        ("status", "succeeded"),
    ]
    outputs = [b for s, b in seq if s == "output"]
    assert [o["chunk"] for o in outputs] == [*tokens, ""]
    assert [o["is_final"] for o in outputs] == [False] * len(tokens) + [True]
    raw_status = rig.on("status", job_id)[0].data
    assert raw_status.startswith(f'{{"job_id":"{job_id}","state":"started","timestamp":'.encode())
    raw_out = rig.on("output", job_id)[0].data
    assert raw_out == f'{{"job_id":"{job_id}","seq":1,"chunk":"You","is_final":false}}'.encode()


async def test_wasm_text_stats_from_the_coordinator(rig: Rig) -> None:
    job_id = await _assign(rig, "wasm", {"text": "hello wasm world"}, wasm_url="/cargos/text-stats.wasm")
    seq = await _finished(rig, job_id)
    assert [(s, b.get("state", b.get("seq"))) for s, b in seq] == [
        ("status", "started"),
        ("output", 1),
        ("output", 2),
        ("status", "succeeded"),
    ]
    assert json.loads(seq[1][1]["chunk"]) == {"words": 3, "chars": 16}
    assert seq[2][1] == {"job_id": job_id, "seq": 2, "chunk": "", "is_final": True}


async def test_image_and_onnx_sequences(rig: Rig) -> None:
    image_job = await _assign(
        rig,
        "container",
        {"prompt": "a lighthouse", "steps": 3, "width": 32, "height": 16},
        container_image="ghcr.io/archipelag-io/sdxl:latest",
    )
    seq = await _finished(rig, image_job)
    assert [s for s, _ in seq] == ["status", "progress", "progress", "progress", "image", "output", "status"]
    assert [(b["step"], b["total"]) for s, b in seq if s == "progress"] == [(1, 3), (2, 3), (3, 3)]
    image = next(b for s, b in seq if s == "image")
    assert list(image) == ["job_id", "image_data", "format", "width", "height"]  # no seed from a container
    png = base64.b64decode(image["image_data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and (image["width"], image["height"]) == (32, 16)
    assert seq[-1][1]["state"] == "succeeded"

    onnx_job = await _assign(
        rig,
        "onnx",
        {"text": "I love this great product"},
        model_url="hf://x/y",
        onnx_task_type="text-classification",
    )
    seq = await _finished(rig, onnx_job)
    assert [(s, b.get("state", b.get("seq"))) for s, b in seq] == [
        ("status", "started"),
        ("output", 0),
        ("status", "succeeded"),
    ]
    chunk = seq[1][1]["chunk"]
    assert seq[1][1]["is_final"] is True
    result = json.loads(chunk)
    assert list(result) == sorted(result) and result["label"] == "LABEL_1"
    assert chunk == json.dumps(result, separators=(",", ":"), sort_keys=True)


async def test_leases_and_cancel(rig: Rig) -> None:
    rig.island.config.runtime.token_rate = 5  # 0.2 s per token: long enough for leases and a cancel
    job_id = await _assign(
        rig, "container", {"prompt": " ".join(["word"] * 40)}, container_image="ghcr.io/x/llm-chat:1"
    )
    await eventually(lambda: asyncio.sleep(0, len(rig.on("lease", job_id)) >= 1), within=5)
    assert rig.on("lease", job_id)[0].data == f'{{"job_id":"{job_id}","extend_seconds":60}}'.encode()
    await _publisher(rig).publish_cancel(rig.island.host_id, job_id)
    seq = await _finished(rig, job_id)
    assert seq[-1][1]["state"] == "cancelled"
    assert not any(b.get("is_final") for s, b in seq if s == "output")


async def test_unparsable_assignment_is_acked_and_dropped(rig: Rig) -> None:
    js = rig.island.nc.jetstream()
    await js.publish(f"host.{rig.island.host_id}.jobs", b'{"job_id":42,"input":null,"lease_expires":1}')

    async def drained() -> bool:
        info = await js.consumer_info("JOBS", f"host-{rig.island.host_id}")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(drained)
    assert rig.on("status") == []
