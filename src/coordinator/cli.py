"""The `coordinator` command: dev, serve, worker, migrate, admin, island and bench."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from coordinator import __version__
from coordinator.cli_admin import admin_app
from coordinator.cli_settings import load_settings as _settings
from coordinator.supervisor import Child

app = typer.Typer(
    help="Archipelag coordinator: the control plane of a distributed compute network.", no_args_is_help=True
)
T = TypeVar("T")
app.add_typer(admin_app, name="admin")


# The cyclic garbage collector of a long-lived process (docs/decisions/gc-tuning.md): the objects that exist
# once it has started (modules, classes, the app) are frozen out of every collection, and the youngest
# generation is collected every 10,000 net allocations instead of 700. Measured: GC 7.4 % of the
# coordinator's CPU under the lifecycle benchmark before, 2.0 % after.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Freeze what exists now (again, once a process has imported and built its app) and set the
    thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived process's event loop on uvloop where it is installed (it ships with
    `uvicorn[standard]` on Linux and macOS), else on asyncio's own loop; its garbage collector tuned
    (`tune_gc`)."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _logging(settings) -> None:  # type: ignore[no-untyped-def]
    from coordinator.telemetry.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format, dev=settings.is_dev)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def migrate() -> None:
    """Apply database migrations (our schema and the job queue's)."""
    from coordinator.repo.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    typer.echo("database is up to date")


async def _serve(settings, *, with_worker: bool, http: bool = True) -> None:  # type: ignore[no-untyped-def]
    from coordinator.app import build_children, build_runtime, run_until_signalled
    from coordinator.supervisor import Supervisor

    runtime = build_runtime(settings)
    supervisor = Supervisor(build_children(runtime, with_worker=with_worker, http=http))
    tune_gc()  # the app is imported and built: freeze it too
    await run_until_signalled(supervisor)


@app.command()
def serve(
    with_worker: Annotated[
        bool, typer.Option("--with-worker", help="Also run the background worker.")
    ] = False,
) -> None:
    """Run the HTTP API, the NATS handlers and the dispatcher (one replica)."""
    settings = _settings()
    _logging(settings)
    run_loop(_serve(settings, with_worker=with_worker))


@app.command()
def worker() -> None:
    """Run the background-job worker (maintenance, payouts, security scans)."""
    settings = _settings()
    _logging(settings)
    run_loop(_serve(settings, with_worker=True, http=False))


@app.command()
def dev(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the stack keeps its data (default ./.data).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port (default 4000 if free, else any free port).")
    ] = None,
) -> None:
    """Everything on this machine with no set-up: embedded PostgreSQL and NATS, migrations, demo data,
    the coordinator with its worker and one reference Island."""
    from coordinator.devstack import (
        EmbeddedNats,
        EmbeddedPostgres,
        choose_dev_port,
        project_data_dir,
        remove_stack_file,
        write_stack_file,
    )
    from coordinator.hosts.nats_access import SHARED_USER, island_url
    from coordinator.repo.migrate import upgrade

    started = time.monotonic()
    root = (data_dir or project_data_dir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    secret_file = root / "secret_key"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    postgres = EmbeddedPostgres(root / "postgres")
    auth, shared_password = _dev_nats_auth(root)
    nats_server = EmbeddedNats(root / "nats", auth=auth)
    try:
        postgres.start()
        database_url = postgres.ensure_database("coordinator")
        nats_server.start()
        http_port = port or int(os.environ.get("COORDINATOR_PORT", 0))
        if not http_port:
            http_port, note = choose_dev_port(root)
            if note:
                typer.echo(note, err=True)
        settings = _settings(
            env="development",
            secret_key=os.environ.get("COORDINATOR_SECRET_KEY") or secret_file.read_text().strip(),
            database_url=database_url,
            nats_url=nats_server.coordinator_url,
            nats_auth_issuer_seed=auth.issuer_seed,
            nats_shared_island_password=shared_password,
            nats_public_url=nats_server.url,
            port=http_port,
            require_host_approval=False,
        )
        _logging(settings)
        upgrade(settings.database_url)
        write_stack_file(
            root,
            database_url=database_url,
            nats_url=nats_server.url,  # without credentials: the file names no secret
            url=f"http://127.0.0.1:{http_port}",
        )
        island_nats_url = island_url(nats_server.url, SHARED_USER, shared_password)
        run_loop(_dev(settings, root, started, island_nats_url))
    finally:
        remove_stack_file(root)
        nats_server.stop()
        postgres.stop()


def _dev_nats_auth(root: Path):  # type: ignore[no-untyped-def]
    """The dev stack's NATS credentials, kept in `<data dir>/nats-auth.json` so Islands that joined keep
    working across restarts: auth ON (callout), compatibility mode ON (the shared password)."""
    import json

    from coordinator.devstack import NatsAuth

    path = root / "nats-auth.json"
    if not path.exists():
        fresh = NatsAuth.generate()
        values = {
            "issuer_seed": fresh.issuer_seed,
            "coordinator_password": fresh.coordinator_password,
            "shared_password": secrets.token_urlsafe(24),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
    values = json.loads(path.read_text())
    auth = NatsAuth(issuer_seed=values["issuer_seed"], coordinator_password=values["coordinator_password"])
    return auth, str(values["shared_password"])


class IslandChild(Child):
    """One reference Island in the dev stack, on the embedded NATS, with a simulated 24 GiB GPU so that all
    four seeded Cargos (llm-chat, sdxl, text-stats, sentiment) are runnable. `island` is imported lazily."""

    name = "island"

    def __init__(self, nats_url: str, state_dir: Path) -> None:
        self.nats_url = nats_url
        self.state_dir = state_dir

    async def run(self, ready: Callable[[], None]) -> None:
        from island.agent import Island, IslandConfig

        agent = Island(
            IslandConfig(
                nats_url=self.nats_url,
                state_dir=self.state_dir,
                region="local",
                gpu_model="NVIDIA GeForce RTX 4090",
                gpu_vram_mb=24564,
                cpu_cores=8,  # simulated: room for 4 concurrent jobs whatever the dev machine
                ram_mb=32768,
                # Without an ask, a top-tier GPU asks the Cargo's base price × 2.0, above the default
                # budget (the base price): the demo Island asks the cheapest seeded price instead.
                asking_prices={"_default": "0.1"},
            )
        )
        await agent.start()
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            await agent.stop()


async def _dev(settings, root: Path, started: float, island_nats_url: str) -> None:  # type: ignore[no-untyped-def]
    from coordinator.app import build_children, build_runtime, run_until_signalled
    from coordinator.seed import demo_sign_in_link, seed_demo
    from coordinator.supervisor import Supervisor

    runtime = build_runtime(settings)
    demo = await seed_demo(runtime, root / "demo-api-key")
    sign_in = await demo_sign_in_link(runtime)
    children = build_children(runtime, with_worker=True)
    children.append(IslandChild(island_nats_url, root / "island"))
    supervisor = Supervisor(children)

    def announce() -> None:
        print(f"URL: {runtime.base_url}", flush=True)
        # The shared (compatibility-mode) credential: any unchanged Island can join with this URL.
        print(f"NATS: {island_nats_url}", flush=True)
        print(f"API key: {demo.api_key}", flush=True)
        print(f"Sign in: {sign_in}", flush=True)
        print(
            f"Started in {time.monotonic() - started:.1f} s; press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )

    await run_until_signalled(supervisor, on_started=announce)


@app.command()
def island(
    nats_url: Annotated[
        str, typer.Option(envvar="NATS_URL", help="NATS server of the coordinator.")
    ] = "nats://localhost:4222",
    state_dir: Annotated[
        Path | None, typer.Option(help="Where state.json (host_id, paired) is kept (default ~/.island).")
    ] = None,
    fleet: Annotated[int, typer.Option("--fleet", min=0, help="Simulate N Islands in this process.")] = 0,
    heartbeat_interval: Annotated[float, typer.Option(min=0.05, help="Seconds between heartbeats.")] = 10.0,
    token_rate: Annotated[float, typer.Option(min=0, help="Mock tokens per second (0: no delay).")] = 50.0,
    gpu: Annotated[
        str | None, typer.Option(help="Simulated GPU model, e.g. 'NVIDIA GeForce RTX 4090'.")
    ] = None,
    vram: Annotated[int | None, typer.Option(min=0, help="Simulated GPU memory in MiB.")] = None,
    region: Annotated[str, typer.Option(help="Region reported at registration.")] = "auto",
    process_command: Annotated[
        str | None, typer.Option(help="A local command speaking the Cargo JSON-lines protocol.")
    ] = None,
    transport: Annotated[
        str,
        typer.Option(
            help="nats (a desktop Island) or channel (a phone/browser Island over /socket/websocket)."
        ),
    ] = "nats",
    api_url: Annotated[
        str, typer.Option(envvar="COORDINATOR_URL", help="The coordinator's HTTP URL (channel transport).")
    ] = "http://localhost:4000",
    owner_key: Annotated[
        str | None,
        typer.Option(
            envvar="ISLAND_OWNER_KEY",
            help="Channel transport: an owner's API key that enters the pairing code itself (fleets).",
        ),
    ] = None,
) -> None:
    """Run the reference Island agent (`--fleet N` for a simulated fleet; `--transport channel` for
    phone/browser Islands over the `island:<id>` channel)."""
    from island.agent import Island, IslandConfig
    from island.fleet import run_fleet
    from island.runtimes import RuntimeOptions

    root = (state_dir or Path.home() / ".island").expanduser()
    config = IslandConfig(
        nats_url=nats_url,
        state_dir=root,
        region=region,
        gpu_model=gpu,
        gpu_vram_mb=vram if gpu else None,
        heartbeat_interval=heartbeat_interval,
        runtime=RuntimeOptions(
            token_rate=token_rate, cache_dir=root / "wasm-cache", process_command=process_command
        ),
    )
    _logging(_settings(env="development"))
    if transport not in ("nats", "channel"):
        raise typer.BadParameter("--transport must be nats or channel")
    make: Callable[[IslandConfig], Island] = Island
    where = nats_url
    if transport == "channel":
        from island.channel import ChannelIsland

        def make(cfg: IslandConfig) -> Island:
            return ChannelIsland(cfg, api_url, owner_key=owner_key)

        where = api_url

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if fleet:
            typer.echo(f"starting {fleet} simulated Islands on {where} ({transport})", err=True)
            await run_fleet(config, fleet, stop, make)
            return
        agent = make(config)
        await agent.start()
        typer.echo(f"Island {agent.host_id} connected to {where} ({transport})", err=True)
        if agent.pairing_code:
            typer.echo(f"ISLAND PAIRING CODE: {agent.pairing_code}", err=True)
        try:
            await stop.wait()
        finally:
            await agent.stop()

    asyncio.run(main())


@app.command()
def bench(
    scenarios: Annotated[list[str] | None, typer.Argument(help="Scenarios to run (default: all).")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: the whole run in under 3 minutes.")
    ] = False,
    output: Annotated[Path, typer.Option(help="Where the report goes.")] = Path("bench/results"),
    profile: Annotated[
        bool, typer.Option("--profile", help="Sample the coordinator with py-spy; report where its CPU went.")
    ] = False,
    repeat: Annotated[
        int, typer.Option(min=1, help="Run each scenario this many times and report the median run.")
    ] = 1,
) -> None:
    """Run the benchmark suite against embedded PostgreSQL and NATS and write a report."""
    from coordinator.benchmarks.runner import run

    results, report = run(list(scenarios or []), quick=quick, output=output, profile=profile, repeat=repeat)
    for result in results:
        typer.echo(f"{result.name}: {result.metrics}")
    typer.echo(f"report: {report}")


# --- admin -------------------------------------------------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
