"""The unit tier does no I/O: no database, NATS, socket or subprocess.

Every unit test runs with the ways out of the process closed: a socket that connects, binds or resolves a
name, and a process started by `subprocess` or `os`, raise `UnitTestIO` (so does a test that asks for one
of the suite's server fixtures). A test that needs any of them belongs in `tests/integration` or
`tests/e2e`. PostgreSQL is reached by libpq (C, not Python sockets): the fixture check is what keeps it
out, since a database URL only comes from those fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

SERVER_FIXTURES = frozenset(
    {"pg_server", "database_url", "runtime", "nats_server_url", "nats_url", "live_server", "http"}
)


class UnitTestIO(AssertionError):
    """A unit test tried to leave the process."""


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise UnitTestIO(f"a unit test may not {what}: move it to tests/integration or tests/e2e")

    return refuse


@pytest.fixture(autouse=True)
def no_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    asked = SERVER_FIXTURES.intersection(request.fixturenames)
    if asked:
        raise UnitTestIO(f"a unit test may not use the server fixtures {sorted(asked)}")
    for name in ("connect", "connect_ex", "bind", "sendto"):
        monkeypatch.setattr(socket.socket, name, _refuse(f"open a connection (socket.{name})"))
    for name in ("getaddrinfo", "gethostbyname", "create_connection"):
        monkeypatch.setattr(socket, name, _refuse(f"use the network (socket.{name})"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process (subprocess)"))
    for name in ("system", "fork", "posix_spawn", "posix_spawnp", "execv", "execve"):
        monkeypatch.setattr(os, name, _refuse(f"start a process (os.{name})"))
    yield
