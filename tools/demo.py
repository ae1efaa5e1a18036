"""`idufleet demo`: the whole system on one machine. A private Mosquitto on a free loopback
port, the controller on SQLite, ~20 MicroPython agents (real unix-port binary, sim board) across
Porto zones, a live rich view, then a clean stop and where the data is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller import registry
from controller.config import (
    ApiConfig,
    Config,
    IngestConfig,
    KeysConfig,
    LogConfig,
    MqttConfig,
    StoreConfig,
)
from controller.domain.ingest import REASONS
from controller.errors import ControllerError
from controller.keys import load_master
from controller.logs import setup
from controller.store import open_store
from protocol import metrics as pm
from tools import binaries
from tools.errors import CliError

ROOT = Path(__file__).resolve().parents[1]
ZONES = ("ribeira", "baixa", "boavista", "campanha", "foz")
MARKER = ".idufleet-demo"
SHOW = {"ap": ("clients", "channel_util_5g"), "sensor": ("noise_laeq", "pm2_5", "temperature")}


# Ctrl-C, a kill, and the terminal closing (SIGHUP, whose default would end the demo at once
# and leave the broker and agents, each in its own session, running) all stop it in order.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    try:
        return binaries.mosquitto()
    except binaries.MissingBinary as e:
        raise CliError(str(e)) from None


def micropython_binary() -> str:
    try:
        return binaries.micropython()
    except binaries.MissingBinary as e:
        raise CliError(str(e)) from None


def fleet(n: int) -> list[tuple[str, str, str]]:
    """(device id, zone, kind): zones round-robin, access points and sensors alternating."""
    out = []
    for i in range(n):
        zone = ZONES[i % len(ZONES)]
        kind = "ap" if (i // len(ZONES)) % 2 == 0 else "sensor"
        out.append((f"{kind}-{zone}-{i // len(ZONES) + 1}", zone, kind))
    return out


@dataclass
class Started:
    broker: subprocess.Popen[bytes] | None = None
    agents: list[tuple[str, subprocess.Popen[bytes]]] | None = None


def start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                "allow_anonymous true",
                "set_tcp_nodelay true",
                "max_queued_messages 100000",  # PLATFORM-NOTES: the default 1000 drops bursts
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                f"listener {port} 127.0.0.1",
            ]
        )
        + "\n"
    )
    log = open(workdir / "mosquitto.log", "ab")  # noqa: SIM115 - handed to the child
    # Own session: a terminal Ctrl-C reaches the demo only, which then stops children in order.
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
    )
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise CliError(f"mosquitto did not start; see {workdir / 'mosquitto.log'}")


def prepare_firmware() -> None:
    """Precompile the agent (firmware/main.py prefers firmware/_mpy: sources do not fit 64K)."""
    if not (ROOT / "firmware" / "main.py").exists():
        raise CliError("firmware/main.py not found: the demo needs the firmware agent")
    try:
        from tools.firmware_build import build
    except ImportError:
        return
    build()


# The device heap, as in the firmware's own tests (tests/firmware/harness.py).
AGENT_HEAP = os.environ.get("IDU_DEMO_HEAP", "64K")


def start_agent(flash: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    root = binaries.device_root()  # a short path, as on a device (tools/binaries.py says why)
    env["MICROPYPATH"] = f"{root}:{root / 'firmware'}"
    log: IO[bytes] = open(flash / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            micropython_binary(),
            "-X",
            f"heapsize={AGENT_HEAP}",
            str(root / "firmware" / "main.py"),
            str(flash),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=flash,
        start_new_session=True,  # Ctrl-C goes to the demo, which stops the agents itself
    )
    log.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{max(0.0, now - ts):.0f}s ago"


async def view(ctl: Any, kinds: dict[str, str], remaining: float) -> Group:
    """One frame of the live view: counters, then one row per device."""
    now = time.time()
    m = ctl.metrics
    rejected = sum(m.rejected_count(r) for r in REASONS)
    devs = ctl.core.devices
    online = sum(d.presence.online for d in devs.values())
    head = Text.assemble(
        ("idufleet demo ", "bold"),
        f"· {online}/{len(devs)} online · received {m.received._value.get():.0f} · stored "
        f"{m.stored._value.get():.0f} · rows {m.rows._value.get():.0f} · rejected {rejected:.0f}"
        f" · ingest p99 {ctl.p99_ms() or 0:.1f} ms · {remaining:.0f}s left (Ctrl-C to stop)",
    )
    t = Table(
        "device", "zone", "kind", "presence", "last seen", "fw", "epoch", "latest", expand=True
    )
    for dev_id in sorted(devs):
        d = devs[dev_id]
        latest = await ctl.db.call(lambda s, d=dev_id: s.latest(d))
        shown = []
        for name in SHOW.get(kinds.get(dev_id, ""), ()):
            mid = pm.BY_NAME[name]
            if mid in latest:
                unit = pm.REGISTRY[mid][1]
                shown.append(f"{name} {latest[mid][1]:g}{'' if unit == name else unit}")
        t.add_row(
            dev_id,
            d.zone,
            kinds.get(dev_id, "?"),
            "[green]online[/]" if d.presence.online else "[red]offline[/]",
            _ago(d.presence.last_seen, now),
            d.firmware or "-",
            str(d.boot_epoch or "-"),
            "  ".join(shown) or "-",
        )
    return Group(head, t)


async def run_demo(
    workdir: Path, seconds: float, n_devices: int, interval: int, console: Console
) -> dict[str, Any]:
    from controller.app import Controller

    mqtt_port, api_port = free_port(), free_port()
    token = secrets.token_hex(16)
    cfg = Config(
        mqtt=MqttConfig(port=mqtt_port, client_id="idufleet-demo", keepalive=10),
        store=StoreConfig(backend="sqlite", path=str(workdir / "idufleet.sqlite")),
        keys=KeysConfig(master_key_file=str(workdir / "master.key")),
        ingest=IngestConfig(offline_after=max(30, 4 * interval)),
        api=ApiConfig(port=api_port, token=token),
        log=LogConfig(level="warning"),
    )
    conf = workdir / "idufleet.toml"
    conf.touch(mode=0o600)  # it holds the demo's bootstrap token
    conf.write_text(
        "# written by `idufleet demo`; serve its data again with `idufleet serve --config` this\n"
        f'[mqtt]\nport = {mqtt_port}\nclient_id = "idufleet-demo"\n\n'
        f'[store]\nbackend = "sqlite"\npath = "{workdir / "idufleet.sqlite"}"\n\n'
        f'[keys]\nmaster_key_file = "{workdir / "master.key"}"\n\n'
        f'[api]\nport = {api_port}\ntoken = "{token}"\n'
    )
    started = Started()
    master = load_master(cfg.keys, create=True)
    store = open_store(cfg.store)
    kinds: dict[str, str] = {}
    flashes: list[tuple[str, Path]] = []
    try:
        for i, (dev_id, zone, kind) in enumerate(fleet(n_devices)):
            new = registry.create_device(store, master, dev_id, "porto", zone, kind, {"demo": "1"})
            flash = workdir / "devices" / dev_id
            flash.mkdir(parents=True)
            bundle = new.bundle(
                "127.0.0.1",
                mqtt_port,
                interval,
                board="sim",
                keepalive=10,
                sim={"speed": 1, "seed": i + 1},
            )
            (flash / "config.json").write_text(json.dumps(bundle, indent=2))
            (flash / "config.json").chmod(0o600)
            kinds[dev_id] = kind
            flashes.append((dev_id, flash))
    finally:
        store.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:  # before anything is started, so nothing outlives a signal
        loop.add_signal_handler(sig, stop.set)
    prepare_firmware()
    started.broker = start_broker(workdir, mqtt_port)
    ctl = Controller(cfg, master)
    ctl_task = asyncio.create_task(ctl.run())
    try:
        deadline = time.monotonic() + 15
        while not ctl.link.connected.is_set():
            if ctl_task.done() or time.monotonic() > deadline:
                ctl_task.result() if ctl_task.done() else None
                raise CliError("the controller did not connect to the demo broker")
            await asyncio.sleep(0.05)
        started.agents = [(dev_id, start_agent(flash)) for dev_id, flash in flashes]
        end = time.monotonic() + seconds
        with Live(console=console, refresh_per_second=4, transient=not console.is_terminal) as live:
            while not stop.is_set() and time.monotonic() < end:
                live.update(await view(ctl, kinds, end - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            live.update(await view(ctl, kinds, 0))
        crashed = [d for d, p in started.agents if p.poll() not in (None, 0)]
    finally:
        for _, p in started.agents or []:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in started.agents or []:
            stop_process(p, 3.0)
        ctl.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctl_task, 20)
        if started.broker is not None:
            stop_process(started.broker)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    store = open_store(cfg.store)
    try:
        summary = {
            "devices": store.count("devices"),
            "messages": store.count("messages"),
            "metric_rows": store.count("raw_metrics"),
            "presence_events": store.count("presence"),
            "devices_seen": sum(1 for d in store.list_devices() if d.last_seen is not None),
            "agents_crashed": crashed,
            "api_port": api_port,
        }
    finally:
        store.close()
    return summary


@click.command("demo")
@click.option(
    "--seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="How long to run (Ctrl-C stops early).",
)
@click.option("--devices", "n_devices", type=int, default=20, show_default=True)
@click.option(
    "--interval", type=int, default=5, show_default=True, help="Seconds between device reports."
)
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Where the demo keeps its broker, store and device flashes (recreated each run).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts and tests)."
)
def demo(seconds: float, n_devices: int, interval: int, workdir: Path, as_json: bool) -> None:
    """Broker + controller (SQLite) + MicroPython agents across Porto zones, live."""
    if not 1 <= n_devices <= 200:
        raise click.BadParameter("1..200", param_hint="--devices")
    workdir = workdir.resolve()
    if workdir.exists():
        if any(workdir.iterdir()) and not (workdir / MARKER).exists():
            raise CliError(f"{workdir} exists and is not a demo directory; pass another --dir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("recreated by each `idufleet demo` run\n")
    setup("warning")
    console = Console(stderr=as_json)
    try:
        summary = asyncio.run(run_demo(workdir, seconds, n_devices, interval, console))
    except ControllerError as e:
        raise CliError(str(e)) from None
    db = workdir / "idufleet.sqlite"
    if as_json:
        click.echo(json.dumps({**summary, "store": str(db)}))
        return
    console.print(
        f"\n[bold]Stopped.[/] {summary['devices_seen']}/{summary['devices']} devices reported: "
        f"{summary['messages']} messages, {summary['metric_rows']} metric samples, "
        f"{summary['presence_events']} presence events."
    )
    if summary["agents_crashed"]:
        console.print(
            f"[red]agents that exited with an error:[/] {', '.join(summary['agents_crashed'])} "
            f"(see {workdir}/devices/<id>/agent.log)"
        )
    console.print(
        f"""
[bold]Where the data is[/]
  IDU store (SQLite, WAL): {db}
  device flashes + agent logs: {workdir}/devices/<device>/
  broker log: {workdir}/mosquitto.log

[bold]Query it[/]
  export IDUFLEET_CONFIG={workdir}/idufleet.toml  # serve and the CLI both find it (and its token)
  .venv/bin/idufleet serve &  # API on port {summary["api_port"]}
  .venv/bin/idufleet devices
  .venv/bin/idufleet metrics --zone ribeira --metric clients --hourly --since 2h
  .venv/bin/idufleet metrics ap-baixa-1 --metric clients --since 10m
  .venv/bin/python -c "import sqlite3; print(*sqlite3.connect('{db}').execute(
    'SELECT zone, metric, n, vmin, vmax, vsum / n FROM rollup_zone ORDER BY 1, 2'),
    sep='\\n')"  # Python's own sqlite3 module: no sqlite3 binary needed
""",
        soft_wrap=True,
    )
