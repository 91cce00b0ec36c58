"""`coordinator dev` (what `make run` starts): comes up, prints URL/NATS/API key, serves the demo account,
shuts down cleanly on Ctrl-C, and keeps its data across restarts."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from coordinator.devstack import free_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


VARIABLES = (
    "DATABASE_URL",
    "COORDINATOR_DATABASE_URL",
    "NATS_URL",
    "COORDINATOR_ENV",
    "COORDINATOR_SECRET_KEY",
    "COORDINATOR_PORT",
    "COORDINATOR_DATA_DIR",
)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in VARIABLES:
        env.pop(name, None)
    return {**env, **extra}


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "dev", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    received: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    OUTPUT[proc.pid] = []

    def read() -> None:
        for line in stdout:
            OUTPUT[proc.pid].append(line)
            received.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 90
    while len(lines) < 4 and time.monotonic() < deadline:
        try:
            line = received.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "coordinator dev exited during start-up"
            continue
        key, _, value = line.strip().partition(": ")
        if key in ("URL", "NATS", "API key", "Sign in"):
            lines[key] = value
    assert set(lines) == {"URL", "NATS", "API key", "Sign in"}, lines
    return proc, lines


# Everything each dev stack printed (logs included), by pid.
OUTPUT: dict[int, list[str]] = {}


def _stop(proc: subprocess.Popen[str]) -> int:
    """Ctrl-C; the stack must stop cleanly: no traceback, no child that did not stop."""
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("pgserver" in line for line in OUTPUT[proc.pid][-5:]):
        time.sleep(0.05)  # the reader thread catches up with the last lines
    printed = "".join(OUTPUT[proc.pid])
    assert "Traceback" not in printed and "child_did_not_stop" not in printed, printed[-3000:]
    return code


def _admin(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(COORDINATOR_DATA_DIR=str(data_dir), **env),
        cwd=data_dir.parent,
    )


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
        # The printed one-click link signs the demo account in (once).
        assert first["Sign in"].startswith(f"{first['URL']}/auth/magic/")
        landing = httpx.get(first["Sign in"])
        assert landing.status_code == 303 and landing.headers["location"] == "/chat"
        chat = httpx.get(f"{first['URL']}/chat", cookies=landing.cookies)
        assert chat.status_code == 200 and "demo@archipelag.local" in chat.text
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
        # An operator command next to the stack finds its database and secret with no variable set.
        made = _admin(data_dir, "create-user", "ops@example.com", "--api-key")
        assert made.returncode == 0, made.stderr
        assert "using the dev stack" in made.stderr
        ops_key = next(
            line.split(": ", 1)[1] for line in made.stdout.splitlines() if line.startswith("API key")
        )
        ops = httpx.get(f"{first['URL']}/api/v1/account", headers={"Authorization": f"Bearer {ops_key}"})
        assert ops.status_code == 200 and ops.json()["data"]["email"] == "ops@example.com"
        # Pointed at a database without the server's secret, it makes no key that the server would reject.
        refused = _admin(
            data_dir,
            "create-user",
            "other@example.com",
            "--api-key",
            DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
            COORDINATOR_ENV="development",
        )
        assert refused.returncode == 2 and "API key:" not in refused.stdout
        assert "COORDINATOR_SECRET_KEY" in refused.stderr
    finally:
        assert _stop(proc) == 0

    proc, second = _start(data_dir, port)
    try:
        # Same data: the stored demo key still works and names the same account.
        assert second["API key"] == first["API key"]
        # A new run prints a new link of its own, and it works.
        assert second["Sign in"] != first["Sign in"]
        assert httpx.get(second["Sign in"]).status_code == 303
        # The same credentials across restarts (the port may differ).
        assert second["NATS"].rpartition("@")[0] == first["NATS"].rpartition("@")[0]
        again = httpx.get(
            f"{second['URL']}/api/v1/account", headers={"Authorization": f"Bearer {second['API key']}"}
        ).json()["data"]
        assert again["id"] == demo["id"]
    finally:
        assert _stop(proc) == 0


def test_the_dev_port_is_4000_else_the_one_used_last_time_for_this_data_dir(tmp_path: Path) -> None:
    from coordinator.devstack import choose_dev_port

    preferred = free_port()
    assert choose_dev_port(tmp_path, preferred) == (preferred, None)
    with socket.socket() as taken:  # someone else holds the preferred port
        taken.bind(("127.0.0.1", preferred))
        first, note = choose_dev_port(tmp_path, preferred)
        assert first != preferred and note is not None and f"using port {first}" in note
        again, note = choose_dev_port(tmp_path, preferred)
        assert again == first and note is not None and "reusing" in note
        with socket.socket() as also_taken:  # the remembered one is taken too: a new one, remembered
            also_taken.bind(("127.0.0.1", first))
            third, _ = choose_dev_port(tmp_path, preferred)
            assert third not in (preferred, first)
        assert choose_dev_port(tmp_path, preferred)[0] == third
