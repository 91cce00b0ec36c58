"""The tiers themselves: every test module lives in one, carries its marker, and a unit test cannot leave
the process (the guard of `tests/unit/conftest.py` is on)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import TESTS, TIERS
from tests.unit.conftest import UnitTestIO

ROOT = TESTS.parent


def test_every_test_module_lives_in_a_tier() -> None:
    outside = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert outside == [], f"move these into tests/unit, tests/integration or tests/e2e: {outside}"
    for tier in TIERS:
        assert list((TESTS / tier).glob("test_*.py")), tier


def test_the_tier_markers_are_registered_and_applied(request: pytest.FixtureRequest) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert {m.split(":", 1)[0] for m in config["markers"]} >= set(TIERS)
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None


def test_a_unit_test_cannot_open_a_socket() -> None:
    with pytest.raises(UnitTestIO):
        socket.create_connection(("127.0.0.1", 4222), timeout=1)
    with socket.socket() as sock, pytest.raises(UnitTestIO):
        sock.connect(("127.0.0.1", 5432))
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(UnitTestIO):
        sock.connect("/tmp/.s.PGSQL.5432")
    with socket.socket() as sock, pytest.raises(UnitTestIO):
        sock.bind(("127.0.0.1", 0))


async def test_a_unit_test_cannot_open_a_connection_from_asyncio() -> None:
    with pytest.raises(UnitTestIO):
        await asyncio.open_connection("127.0.0.1", 4222)


def test_a_unit_test_cannot_start_a_process() -> None:
    with pytest.raises(UnitTestIO):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_a_unit_test_cannot_start_a_process_from_asyncio() -> None:
    with pytest.raises(UnitTestIO):
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
