"""The fleet simulator, the process runtime and the core-subscription fallback of the reference Island."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
from sqlalchemy import text

from coordinator.protocol import messages as m
from island.agent import Island, IslandConfig
from island.fleet import fleet_configs, run_fleet
from island.runtimes import RuntimeOptions
from tests.islands_support import eventually, running_coordinator


def test_fleet_configs_vary_and_include_sdxl_capable_gpus(tmp_path: Path) -> None:
    configs = fleet_configs(IslandConfig(state_dir=tmp_path), 6)
    assert len({c.state_dir for c in configs}) == 6
    assert len({c.region for c in configs}) >= 3
    assert len({c.asking_prices["_default"] for c in configs if c.asking_prices}) >= 3
    assert any(c.gpu_vram_mb and c.gpu_vram_mb >= 8192 for c in configs)
    assert any(c.gpu_model is None for c in configs)


async def test_fleet_registers_distinct_islands(database_url: str, nats_url: str, tmp_path: Path) -> None:
    async with running_coordinator(database_url, nats_url) as runtime:
        stop = asyncio.Event()
        base = IslandConfig(nats_url=nats_url, state_dir=tmp_path, heartbeat_interval=0.2)
        task = asyncio.create_task(run_fleet(base, 6, stop))

        async def six_beating() -> Any:
            async with runtime.db.session() as session:
                rows = (
                    await session.execute(
                        text(
                            "SELECT gpu_vram_mb, region, asking_prices FROM hosts "
                            "WHERE last_heartbeat IS NOT NULL"
                        )
                    )
                ).all()
            return rows if len(rows) == 6 else None

        rows = await eventually(six_beating, within=10)
        stop.set()
        islands = await task
        assert len({i.host_id for i in islands}) == 6
        assert any((r.gpu_vram_mb or 0) >= 8192 for r in rows)
        assert len({r.region for r in rows}) >= 3
        assert len(runtime.components["fleet"].available()) == 6
        # identities persist: a restarted fleet reuses the same host ids
        again = [Island(c).host_id for c in fleet_configs(base, 6)]
        assert again == [i.host_id for i in islands]


CARGO = """
import json, sys
data = json.loads(sys.stdin.readline())
print(json.dumps({"type": "status", "message": "ready"}), flush=True)
for word in data["text"].split():
    print(json.dumps({"type": "token", "content": word.upper()}), flush=True)
print(json.dumps({"type": "progress", "step": 1, "total": 1}), flush=True)
print("not json", flush=True)
"""


async def test_process_runtime_over_core_fallback(database_url: str, nats_url: str, tmp_path: Path) -> None:
    script = tmp_path / "cargo.py"
    script.write_text(CARGO)
    async with running_coordinator(database_url, nats_url) as runtime:
        island = Island(
            IslandConfig(
                nats_url=nats_url,
                state_dir=tmp_path / "island",
                heartbeat_interval=0.5,
                use_jetstream=False,
                runtime=RuntimeOptions(token_rate=0, process_command=f"{sys.executable} {script}"),
            )
        )
        observer = await nats.connect(nats_url)
        wire: list[tuple[str, dict[str, Any]]] = []

        async def keep(msg: Any) -> None:
            suffix = msg.subject.rsplit(".", 1)[1]
            if suffix in ("status", "output", "progress"):
                wire.append((suffix, json.loads(msg.data)))

        await observer.subscribe(f"host.{island.host_id}.*", cb=keep)
        await observer.flush()
        await island.start()
        try:
            assert island.jetstream is False
            job_id = str(uuid.uuid4())
            job = m.build_assign_job(
                job_id=job_id,
                workload_id=5,
                input={"text": "two words"},
                lease_expires_ms=1,
                workload_runtime="container",
                supported_runtimes=["container"],
                sandbox_tier="standard",
                container_image="registry.example/custom:1",
            )
            # a JetStream publish is a normal publish too: the core subscriber receives it
            await runtime.components["publisher"].publish_assignment(island.host_id, job, msg_id=job_id)
            await eventually(lambda: asyncio.sleep(0, any(b.get("state") == "succeeded" for _, b in wire)))
            assert [(s, b.get("state", b.get("seq", b.get("step")))) for s, b in wire] == [
                ("status", "started"),
                ("status", "streaming"),
                ("output", 1),
                ("output", 2),
                ("progress", 1),
                ("output", 3),
                ("status", "succeeded"),
            ]
            assert [b["chunk"] for s, b in wire if s == "output"] == ["TWO", "WORDS", ""]
            await runtime.components["publisher"].purge_host_jobs(island.host_id)
        finally:
            await island.stop()
            await observer.close()


async def test_island_command_runs_a_fleet_until_interrupted(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    import signal

    async with running_coordinator(database_url, nats_url) as runtime:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coordinator.cli", "island", "--fleet", "3", "--nats-url", nats_url,
            "--state-dir", str(tmp_path), "--heartbeat-interval", "0.2",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await eventually(
                lambda: asyncio.sleep(0, len(runtime.components["fleet"].available()) == 3), within=20
            )
        finally:
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 20)
        assert code == 0
        assert len(list(tmp_path.glob("island-*/state.json"))) == 3
