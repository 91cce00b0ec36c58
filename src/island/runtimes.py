"""The runtimes of the reference Island: mock LLM, mock image, mock ONNX classification, real WASM
(wasmtime, WASI preview 1) and a local process, each emitting the official Island's message sequence."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from coordinator.protocol.messages import AssignJob
from island.cargo_io import CargoLines, JobFailed, Reporter, cargo_stdin
from island.png import gradient_png

WASM_FUEL = 100_000_000_000
WASM_TIMEOUT_SECONDS = 60.0
WASM_STDOUT_CAP = 4096
# Container job time limits by AssignJob `sandbox_tier` (island-protocol §9, §10); absent or unknown: 300 s.
TIER_TIMEOUT_SECONDS = {"restricted": 60.0, "standard": 300.0, "elevated": 600.0}
DEFAULT_CONTAINER_TIMEOUT = 300.0


def container_timeout(job: AssignJob) -> float:
    """The container time limit the official Island applies for the job's sandbox tier."""
    return TIER_TIMEOUT_SECONDS.get(job.sandbox_tier or "", DEFAULT_CONTAINER_TIMEOUT)


@dataclass
class RuntimeOptions:
    token_rate: float = 50.0  # tokens (and image steps) per second; 0 = as fast as possible
    cache_dir: Path = Path(tempfile.gettempdir()) / "island-wasm-cache"
    process_command: str | None = None
    wasm_fuel: int = WASM_FUEL
    wasm_timeout: float = WASM_TIMEOUT_SECONDS


def runtime_for(job: AssignJob, options: RuntimeOptions) -> str:
    """Which local runtime runs an AssignJob."""
    if job.runtime_type == "wasm":
        return "wasm"
    if job.runtime_type == "onnx":
        return "onnx"
    if job.runtime_type == "diffusers":
        return "mock-image"
    image = (job.container_image or "").lower()
    if "llm" in image or "chat" in image:
        return "mock-llm"
    if any(word in image for word in ("sdxl", "image", "diffusion")):
        return "mock-image"
    if job.runtime_type == "process" or options.process_command:
        return "process"
    return "unsupported"


def prompt_of(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    if isinstance(value.get("prompt"), str):
        return str(value["prompt"])
    messages = value.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    return str(value.get("text", ""))


def mock_tokens(prompt: str, max_tokens: int) -> list[str]:
    """A deterministic reply: the prompt's words echoed back with a fixed preamble, one token per word."""
    words = ["You", "said:", *prompt.split()] if prompt.strip() else ["Hello!"]
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return tokens[: max(1, max_tokens)]


async def _pace(rate: float) -> None:
    await asyncio.sleep(1 / rate if rate > 0 else 0)


async def run_mock_llm(job: AssignJob, report: Reporter, options: RuntimeOptions) -> None:
    data = job.input if isinstance(job.input, dict) else {}
    max_tokens = _int_in(data, "max_tokens", 256, 1, 32768)
    lines = CargoLines(report, wasm=False)
    await lines.feed('{"type":"status","message":"ready"}')
    for token in mock_tokens(prompt_of(data), max_tokens):
        await _pace(options.token_rate)
        await lines.feed(json.dumps({"type": "token", "content": token}))
    await lines.final_chunk()  # container: the final chunk follows exit code 0


def _int_in(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key)
    return max(low, min(high, value)) if isinstance(value, int) and not isinstance(value, bool) else default


async def run_mock_image(job: AssignJob, report: Reporter, options: RuntimeOptions) -> None:
    data = job.input if isinstance(job.input, dict) else {}
    steps = _int_in(data, "steps", 4, 1, 50)
    width = _int_in(data, "width", 64, 8, 1024)
    height = _int_in(data, "height", 64, 8, 1024)
    seed = _int_in(data, "seed", 42, 0, 2**63 - 1)
    for step in range(1, steps + 1):
        await _pace(options.token_rate)
        await report.progress(step, steps)
    png = gradient_png(prompt_of(data), seed, width, height)
    await report.image(base64.b64encode(png).decode(), "png", width, height)
    await CargoLines(report, wasm=False).final_chunk()


POSITIVE = {"good", "great", "love", "excellent", "happy", "nice", "wonderful", "best", "like"}
NEGATIVE = {"bad", "terrible", "hate", "awful", "sad", "worst", "poor", "horrible", "dislike"}


def mock_classification(text: str) -> dict[str, Any]:
    """A deterministic sentiment guess shaped like the official ONNX text-classification result."""
    words = [w.strip(".,!?;:").lower() for w in text.split()]
    balance = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    if balance == 0:  # undecided: a stable coin from the text
        balance = 1 if hashlib.sha256(text.encode()).digest()[0] % 2 else -1
    score = round(min(0.99, 0.6 + 0.1 * abs(balance)), 4)
    positive = balance > 0
    scores = [round(1 - score, 4), score] if positive else [score, round(1 - score, 4)]
    return {
        "label": "LABEL_1" if positive else "LABEL_0",
        "score": score,
        "scores": scores,
        "task": "text-classification",
    }


async def run_mock_onnx(job: AssignJob, report: Reporter, options: RuntimeOptions) -> None:
    text = prompt_of(job.input)
    result = json.dumps(mock_classification(text), separators=(",", ":"), sort_keys=True)
    await report.output(0, result, True)  # ONNX: one final chunk, seq 0, keys sorted


async def fetch_wasm(url: str, expected_hash: str | None, cache_dir: Path) -> bytes:
    if url.startswith(("http://", "https://")):
        cached = cache_dir / hashlib.sha256(url.encode()).hexdigest()
        if cached.exists() and not expected_hash:
            return cached.read_bytes()
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.get(url)
                response.raise_for_status()
        except httpx.HTTPError:
            raise JobFailed("Failed to download/cache WASM module") from None
        body = response.content
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(body)
    else:
        try:
            body = Path(url).read_bytes()
        except OSError:
            raise JobFailed("Failed to download/cache WASM module") from None
    if expected_hash:
        want = expected_hash.lower().removeprefix("sha256:")
        if hashlib.sha256(body).hexdigest() != want:
            raise JobFailed("WASM hash mismatch")
    return body


def execute_wasm(module: bytes, stdin: str, fuel: int, timeout: float) -> tuple[int, str, bool]:
    """Run `_start` with WASI stdin/stdout, a fuel budget and a wall-clock limit.
    Returns (exit code, stdout capped at 4 KiB, timed out)."""
    import wasmtime

    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    store.set_fuel(fuel)
    store.set_epoch_deadline(1)
    with tempfile.TemporaryDirectory(prefix="island-wasm-") as tmp:
        stdin_path, stdout_path = Path(tmp) / "stdin", Path(tmp) / "stdout"
        stdin_path.write_text(stdin)
        wasi = wasmtime.WasiConfig()
        wasi.stdin_file = str(stdin_path)
        wasi.stdout_file = str(stdout_path)
        store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        timer = threading.Timer(timeout, engine.increment_epoch)
        timer.start()
        code, timed_out = 0, False
        try:
            instance = linker.instantiate(store, wasmtime.Module(engine, module))
            start = instance.exports(store)["_start"]
            start(store)  # type: ignore[operator]
        except wasmtime.ExitTrap as exit_trap:
            code = exit_trap.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as trap:
            code = 1
            timed_out = "interrupt" in str(trap).lower()
        finally:
            timer.cancel()
        out = stdout_path.read_bytes() if stdout_path.exists() else b""
    if len(out) > WASM_STDOUT_CAP:  # the Island's pipe traps past 4 KiB
        out, code = out[:WASM_STDOUT_CAP], code or 1
    return code, out.decode(errors="replace"), timed_out


async def run_wasm(job: AssignJob, report: Reporter, options: RuntimeOptions) -> None:
    if not job.wasm_url:
        raise JobFailed("WASM workload missing wasm_url")
    module = await fetch_wasm(job.wasm_url, job.wasm_hash, options.cache_dir)
    code, stdout, timed_out = await asyncio.to_thread(
        execute_wasm, module, cargo_stdin(job.input), options.wasm_fuel, options.wasm_timeout
    )
    lines = CargoLines(report, wasm=True)
    for line in stdout.splitlines():  # WASM output is replayed after the module exits
        await lines.feed(line)
    if timed_out:
        raise JobFailed(f"Timeout: job exceeded {int(options.wasm_timeout)}s limit")
    if code != 0:
        raise JobFailed(f"Exit code: {code}")


async def run_process(job: AssignJob, report: Reporter, options: RuntimeOptions) -> None:
    if not options.process_command:
        raise JobFailed("No process command configured on this Island")
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(options.process_command),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((cargo_stdin(job.input) + "\n").encode())
    await proc.stdin.drain()
    proc.stdin.close()
    lines = CargoLines(report, wasm=False)
    try:
        async for raw in proc.stdout:
            if raw.endswith(b"\n"):  # a last line without newline is lost, as in the container runtime
                await lines.feed(raw.decode(errors="replace"))
        code = await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        raise
    if code != 0:
        raise JobFailed(f"Exit code: {code}")
    await lines.final_chunk()


RUNNERS = {
    "mock-llm": run_mock_llm,
    "mock-image": run_mock_image,
    "onnx": run_mock_onnx,
    "wasm": run_wasm,
    "process": run_process,
}
