"""`coordinator bench --profile`: samples the coordinator process with py-spy while a scenario runs, and
reduces the samples to where the CPU went (by library) and the hottest frames.

py-spy reads the process from outside (no instrumentation in the measured code); it needs ptrace
permission over the coordinator (root, or `kernel.yama.ptrace_scope = 0`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# A leaf frame is attributed to the first category owning its file (py-spy names files from their package,
# "sqlalchemy/orm/session.py", or with their full path when outside one).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database driver (psycopg)", ("psycopg", "psycopg_binary", "psycopg_pool")),
    ("SQLAlchemy", ("sqlalchemy", "greenlet")),
    ("HTTP (uvicorn, Starlette, FastAPI)", ("uvicorn", "starlette", "fastapi", "httptools", "h11")),
    ("NATS client", ("nats",)),
    ("logging (structlog)", ("structlog", "logging")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("validation and JSON", ("pydantic", "pydantic_core", "json", "orjson", "jsonschema")),
    ("coordinator", ("coordinator",)),
    ("event loop (asyncio, uvloop)", ("asyncio", "uvloop", "selectors.py", "socket.py")),
)
OTHER = "other"


def py_spy() -> str:
    """The py-spy executable beside this interpreter (the dev extra installs it), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: install the dev extra (make venv) or `pip install py-spy`")
    return found


@dataclass
class Sampler:
    """py-spy recording one process until it exits (or `stop`), in py-spy's collapsed-stack format."""

    pid: int
    output: Path
    rate: int = 100
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        command = [py_spy(), "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate)]
        self.proc = subprocess.Popen(
            [*command, "--output", str(self.output), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for py-spy to write its output (it stops by itself once the sampled process has exited)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()


def _file_of(frame: str) -> str:
    """'submit (coordinator/jobs/service.py:12)' → 'coordinator/jobs/service.py'."""
    inside = frame.rpartition(" (")[2]
    return inside.rpartition(":")[0] or inside


def category_of(frame: str) -> str:
    path = _file_of(frame)
    for name, packages in CATEGORIES:
        for package in packages:
            if path.startswith(package + "/") or f"/{package}/" in path or path.endswith("/" + package):
                return name
            if package.endswith(".py") and (path == package or path.endswith("/" + package)):
                return name
    return OTHER


def summarise(collapsed: str, top: int = 12) -> dict[str, object]:
    """Shares of CPU samples per category (by leaf frame), the hottest leaf frames, and the coordinator
    functions most often on the stack (inclusive)."""
    by_category: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        by_category[category_of(frames[-1])] += n
        leaves[frames[-1]] += n
        for frame in {f for f in frames if category_of(f) == "coordinator" and "cli.py" not in f}:
            function, _, where = frame.rpartition(" (")
            ours[f"{function} ({where.split('coordinator/', 1)[-1]}"] += n
    if total == 0:
        return {"samples": 0}

    def share(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

    return {
        "samples": total,
        "by_category_pct": share(by_category),
        "hottest_frames_pct": share(leaves),
        "coordinator_functions_pct": share(ours),
    }
