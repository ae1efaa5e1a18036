"""`idufleet simulate`: a simulated fleet against a private stack (default) or an existing broker
and controller, with a live rich view and a last-line JSON summary (docs/SIMULATOR.md). Parses,
calls sim.session.simulate, prints. Bad arguments: one line with the fix, exit 2."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sim.model import Behaviour
from sim.provision import ProvisionError
from sim.scenario import Scenario, ScenarioError, load
from sim.session import RunConfig, Snapshot, simulate
from sim.stack import StackError
from tools.demo import ZONES
from tools.errors import CliError

MAX_DEVICES = 50_000


class UsageLine(click.ClickException):
    """A usage error as one line (`Error: ...`), exit 2: what is wrong and the fix."""

    exit_code = 2


class OneLineCommand(click.Command):
    """click's own parse errors (a bad integer, a missing value) as one line too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if isinstance(e, UsageLine):
                raise
            raise UsageLine(e.format_message()) from None


def _broker(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageLine(f"--broker {text!r}: use HOST:PORT, e.g. --broker 10.0.0.5:1883")
    return host, int(port)


def frame(s: Snapshot) -> Table:
    t = Table(title=f"idufleet simulate · {s.t:.0f}s · {s.phase}", expand=False)
    for col in ("connected", "reports/s", "sent", "acks", "reconnects", "errors", "buffered"):
        t.add_column(col, justify="right")
    t.add_row(
        f"{s.connected}/{s.devices}",
        f"{s.reports_per_s:.0f}",
        str(s.sent),
        str(s.acks),
        str(s.reconnects),
        str(s.errors),
        str(s.buffered),
    )
    if s.log:
        t.caption = "timeline: " + " · ".join(s.log)
    return t


@click.command("simulate", cls=OneLineCommand)
@click.option("--devices", "n", type=int, default=100, show_default=True, help="Virtual devices.")
@click.option(
    "--kind", type=click.Choice(["ap", "sensor", "mix"]), default="mix", show_default=True
)
@click.option("--zones", default=None, help="Comma-separated zones (default: the controller's).")
@click.option("--interval", type=int, default=30, show_default=True, help="Seconds per report.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds to run.")
@click.option("--scenario", "scenario_path", type=click.Path(path_type=Path), default=None,
              help="TOML scenario: fault knobs and a timeline (docs/SIMULATOR.md).")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="Faults and jitter seed.")
@click.option("--ramp", type=float, default=None, help="Seconds to power on the fleet over.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
@click.option("--keep", is_flag=True, help="Keep devices, accounts and the stack's directory.")
@click.option("--broker", "broker_text", default=None, help="Existing broker HOST:PORT.")
@click.option("--api", default=None, help="Existing controller API URL (with --broker).")
@click.option("--token", default=None, help="Operator token (or IDUFLEET_API_TOKEN).")
@click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="`idufleet broker init` dir: dynsec admin for device accounts.")  # fmt: skip
@click.option("--prefix", default="", help="Device id prefix (default: sim, or sim<4 hex>).")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the private stack lives (default: a temporary directory).")  # fmt: skip
def simulate_cmd(
    n: int,
    kind: str,
    zones: str | None,
    interval: int,
    duration: float,
    scenario_path: Path | None,
    seed: int,
    ramp: float | None,
    as_json: bool,
    keep: bool,
    broker_text: str | None,
    api: str | None,
    token: str | None,
    broker_dir: Path | None,
    prefix: str,
    workdir: Path | None,
) -> None:
    """N virtual devices, each with its own MQTT connection, key and account."""
    if not 1 <= n <= MAX_DEVICES:
        raise UsageLine(f"--devices {n}: use 1..{MAX_DEVICES}")
    if interval < 1:
        raise UsageLine(f"--interval {interval}: use whole seconds >= 1")
    if not duration > 0:
        raise UsageLine(f"--duration {duration:g}: use seconds > 0")
    if ramp is not None and ramp < 0:
        raise UsageLine(f"--ramp {ramp:g}: use seconds >= 0")
    broker = _broker(broker_text)
    if (broker is None) != (api is None):
        raise UsageLine("--broker and --api go together: give both, or neither for a private stack")
    token = token if token is not None else os.environ.get("IDUFLEET_API_TOKEN", "")
    if broker is not None and not token:
        raise UsageLine("registering devices needs the operator token: pass --token or set "
                        "IDUFLEET_API_TOKEN")  # fmt: skip
    if broker_dir is not None and broker is None:
        raise UsageLine("--broker-dir is for an existing broker: add --broker and --api")
    zone_list = tuple(z.strip() for z in zones.split(",") if z.strip()) if zones else ()
    if zones is not None and not zone_list:
        raise UsageLine("--zones is empty: give names like --zones ribeira,foz")
    scenario = Scenario()
    if scenario_path is not None:
        try:
            scenario = load(scenario_path)
            scenario.check_duration(duration)
        except ScenarioError as e:
            raise UsageLine(str(e)) from None
        if broker is not None and any(a.action == "restart-broker" for a in scenario.timeline):
            raise UsageLine(
                f"{scenario_path}: restart-broker needs the simulator's own broker; "
                "drop --broker/--api or remove that action"
            )
    rc = RunConfig(
        devices=n,
        kind=kind,
        zones=zone_list or (ZONES if broker is None else ()),
        interval=interval,
        duration=duration,
        ramp=ramp,
        seed=seed,
        scenario=scenario,
        keep=keep,
        broker=broker,
        api=api or "",
        token=token,
        broker_dir=broker_dir,
        prefix=prefix,
        workdir=workdir.resolve() if workdir else None,
        behaviour=Behaviour(interval=interval),
    )
    summary = run(rc, as_json)
    click.echo(json.dumps(summary))


def run(rc: RunConfig, quiet: bool) -> dict[str, Any]:
    console = Console(stderr=True)
    try:
        if quiet or not console.is_terminal:
            return asyncio.run(simulate(rc))
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            return asyncio.run(simulate(rc, lambda s: live.update(frame(s))))
    except (ProvisionError, StackError, RuntimeError, ValueError) as e:
        raise CliError(str(e)) from None
