"""The reference Island with `--transport channel` (a phone Island in Python) against the coordinator:
device pairing with an owner key, jobs taken from the socket and completed; a small fleet of them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from sqlalchemy import text

from coordinator.protocol.heartbeat import MobileState
from island.agent import IslandConfig
from island.channel import ChannelIsland, credential_path
from island.fleet import run_fleet
from island.runtimes import RuntimeOptions
from tests.factories import make_consumer, seed_cargos
from tests.islands_support import eventually, running_coordinator
from tests.job_support import host_row, job_row

CHAT = {"workload": "llm-chat", "input": {"prompt": "Hello there"}}


def config(tmp_path: Path, name: str) -> IslandConfig:
    return IslandConfig(
        state_dir=tmp_path / name,
        heartbeat_interval=0.2,
        lease_interval=0.2,
        asking_prices={"_default": "0.5"},
        runtime=RuntimeOptions(token_rate=0, cache_dir=tmp_path / "wasm-cache"),
    )


async def test_a_channel_island_pairs_itself_runs_jobs_and_keeps_its_device_token(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    async with running_coordinator(database_url, nats_url) as runtime:
        await seed_cargos(runtime)
        owner = await make_consumer(runtime, "owner@example.com")
        consumer = await make_consumer(runtime, "consumer@example.com")
        mobile = MobileState(battery_level=80, charging=False, thermal_state="fair", network="wifi")
        island = ChannelIsland(
            config(tmp_path, "phone"), runtime.base_url, owner_key=owner.key, mobile=mobile
        )
        await island.start()
        try:
            host = await host_row(runtime, uuid.UUID(island.host_id))
            assert (host.owner_id, host.transport) == (owner.user.id, "websocket")
            assert credential_path(tmp_path / "phone").exists()

            async def beating() -> bool:
                view = runtime.components["fleet"].get(uuid.UUID(island.host_id))
                return view is not None and view.status == "online"

            await eventually(beating)
            async with httpx.AsyncClient(base_url=runtime.base_url, timeout=30) as http:
                response = await http.post("/api/v1/jobs", headers=consumer.headers, json=CHAT)
                assert response.status_code == 201, response.text
                job_id = response.json()["data"]["id"]

                async def done() -> bool:
                    return (await job_row(runtime, job_id)).state == "succeeded"

                await eventually(done, within=20)
            row = await job_row(runtime, job_id)
            assert row.host_id == uuid.UUID(island.host_id) and row.output
        finally:
            await island.stop()
        # Restarted, it reuses its stored device token (no new pairing).
        again = ChannelIsland(config(tmp_path, "phone"), runtime.base_url)
        await asyncio.wait_for(again.start(), 10)
        try:
            assert again.host_id == island.host_id
        finally:
            await again.stop()


async def test_a_fleet_of_channel_islands_connects(database_url: str, nats_url: str, tmp_path: Path) -> None:
    async with running_coordinator(database_url, nats_url) as runtime:
        owner = await make_consumer(runtime, "owner@example.com")
        stop = asyncio.Event()
        base = config(tmp_path, "fleet")
        fleet = asyncio.create_task(
            run_fleet(base, 3, stop, lambda c: ChannelIsland(c, runtime.base_url, owner_key=owner.key))
        )

        async def three_online() -> bool:
            async with runtime.db.session() as session:
                n = await session.scalar(
                    text(
                        "SELECT count(*) FROM hosts "
                        "WHERE transport = 'websocket' AND last_heartbeat_at IS NOT NULL"
                    )
                )
            return n == 3

        try:
            await eventually(three_online, within=20)
        finally:
            stop.set()
            await fleet
