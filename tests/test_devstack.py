"""`coordinator dev` (what `make run` starts): comes up, prints URL/NATS/API key, serves the demo account,
shuts down cleanly on Ctrl-C, and keeps its data across restarts."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from coordinator.devstack import free_port

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in ("DATABASE_URL", "NATS_URL", "COORDINATOR_ENV", "COORDINATOR_SECRET_KEY", "COORDINATOR_PORT"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "dev", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    received: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    threading.Thread(target=lambda: [received.put(line) for line in stdout], daemon=True).start()
    deadline = time.monotonic() + 90
    while len(lines) < 3 and time.monotonic() < deadline:
        try:
            line = received.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "coordinator dev exited during start-up"
            continue
        key, _, value = line.strip().partition(": ")
        if key in ("URL", "NATS", "API key"):
            lines[key] = value
    assert set(lines) == {"URL", "NATS", "API key"}, lines
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


def test_dev_stack_serves_the_demo_account_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    proc, first = _start(data_dir, port)
    try:
        assert first["URL"] == f"http://127.0.0.1:{port}"
        # Auth is on; the printed URL carries the compatibility-mode shared credential (user `island`),
        # which the demo Island itself uses to run the job below.
        assert first["NATS"].startswith("nats://island:") and "@127.0.0.1:" in first["NATS"]
        assert first["API key"].startswith("ak_")
        account = httpx.get(
            f"{first['URL']}/api/v1/account", headers={"Authorization": f"Bearer {first['API key']}"}
        )
        assert account.status_code == 200
        demo = account.json()["data"]
        assert demo["email"] == "demo@archipelag.local" and demo["credits"] > 0
        ready = httpx.get(f"{first['URL']}/readyz").json()["checks"]
        assert ready == {"database": "ok", "nats": "ok", "started": "ok"}
        # The demo Island runs a chat job end to end.
        headers = {"Authorization": f"Bearer {first['API key']}"}
        job = httpx.post(
            f"{first['URL']}/api/v1/jobs",
            headers=headers,
            json={"workload": "llm-chat", "input": {"prompt": "Hello demo"}},
        ).json()["data"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = httpx.get(f"{first['URL']}/api/v1/jobs/{job['id']}", headers=headers).json()["data"]
            if job["status"] in ("completed", "failed", "cancelled", "timeout"):
                break
            time.sleep(0.2)
        assert job["status"] == "completed" and "Hello demo" in job["output"]
    finally:
        assert _stop(proc) == 0

    proc, second = _start(data_dir, port)
    try:
        # Same data: the stored demo key still works and names the same account.
        assert second["API key"] == first["API key"]
        # The same credentials across restarts (the port may differ).
        assert second["NATS"].rpartition("@")[0] == first["NATS"].rpartition("@")[0]
        again = httpx.get(
            f"{second['URL']}/api/v1/account", headers={"Authorization": f"Bearer {second['API key']}"}
        ).json()["data"]
        assert again["id"] == demo["id"]
    finally:
        assert _stop(proc) == 0
