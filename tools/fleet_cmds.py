"""`idufleet devices`, `idufleet metrics`, `idufleet command`: read and act through the
controller's HTTP API (--api / IDUFLEET_API), so they work against a remote controller."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from protocol import messages as M
from tools.api_client import ApiClient
from tools.errors import CliError
from tools.options import api_option

_api_option = api_option


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    d = max(0.0, time.time() - ts)
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    return f"{d / 3600:.1f}h ago"


@click.command("devices")
@_api_option
@click.option("--zone", default=None)
@click.option("--kind", default=None)
@click.option("--online/--offline", "online", default=None, help="Only devices online / offline.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def devices(
    api: str | None, zone: str | None, kind: str | None, online: bool | None, as_json: bool
) -> None:
    """List registered devices with presence."""
    rows: list[dict[str, Any]] = ApiClient(api).get(
        "/api/devices", zone=zone, kind=kind, online=None if online is None else str(online).lower()
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table("device", "zone", "kind", "status", "presence", "last seen", "firmware", "epoch")
    for d in rows:
        t.add_row(
            d["id"],
            d["zone"],
            d["kind"],
            d["status"],
            "[green]online[/]" if d["online"] else "[red]offline[/]",
            _ago(d["last_seen"]),
            d["firmware"] or "-",
            str(d["boot_epoch"] if d["boot_epoch"] is not None else "-"),
        )
    Console().print(t)


@click.command("metrics")
@_api_option
@click.argument("device", required=False)
@click.option("--zone", default=None, help="A zone instead of a device.")
@click.option("--metric", required=True, help="Name (clients, noise_laeq, pm2_5, ...) or id.")
@click.option("--since", default="1h", show_default=True, help="Unix seconds or 90s/15m/6h/30d.")
@click.option("--until", default=None)
@click.option("--hourly", is_flag=True, help="Hourly rollups (count, min, max, mean, last).")
@click.option("--json", "as_json", is_flag=True)
def metrics(
    api: str | None,
    device: str | None,
    zone: str | None,
    metric: str,
    since: str,
    until: str | None,
    hourly: bool,
    as_json: bool,
) -> None:
    """Query one metric of DEVICE (or --zone Z), raw or hourly."""
    if (device is None) == (zone is None):
        raise click.UsageError("give a DEVICE or --zone, not both")
    out = ApiClient(api).get(
        "/api/metrics",
        device=device,
        zone=zone,
        metric=metric,
        since=since,
        until=until,
        resolution="hour" if hourly else "raw",
    )
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    unit = out.get("unit") or ""
    if hourly:
        t = Table(
            "hour (UTC)", "count", "min", "max", "mean", "last", title=f"{out['metric']} [{unit}]"
        )
        for p in out["points"]:
            hour = time.strftime("%Y-%m-%d %H:00", time.gmtime(p["hour"]))
            t.add_row(
                hour,
                str(p["count"]),
                f"{p['min']:g}",
                f"{p['max']:g}",
                f"{p['mean']:.4g}",
                f"{p['last']:g}",
            )
    else:
        cols = ["time (UTC)", *(["device"] if zone else []), "value"]
        t = Table(*cols, title=f"{out['metric']} [{unit}]")
        for p in out["points"]:
            row = [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p["ts"]))]
            if zone:
                row.append(p["device"])
            t.add_row(*row, f"{p['value']:g}")
    Console().print(t)


_OPS = ("ping", "reboot", "diagnostics", "set-config")


@click.command("command")
@_api_option
@click.argument("device")
@click.argument("op", type=click.Choice(_OPS))
@click.option("--interval", type=int, default=None, help="set-config: seconds between reports.")
@click.option("--batch", type=int, default=None, help="set-config: samples per message.")
@click.option(
    "--ttl", type=int, default=60, show_default=True, help="Seconds the command stays valid."
)
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for the ACK (0: don't).",
)
def command(
    api: str | None,
    device: str,
    op: str,
    interval: int | None,
    batch: int | None,
    ttl: int,
    wait: float,
) -> None:
    """Send a signed command to DEVICE and wait for its ACK (needs an operator's token). A job
    of one device: an offline DEVICE gets it when it reconnects within --ttl."""
    args: dict[str, Any] = {}
    if op == "set-config":
        if interval is not None:
            args[str(M.G_INTERVAL)] = interval
        if batch is not None:
            args[str(M.G_BATCH)] = batch
        if not args:
            raise click.UsageError("set-config needs --interval and/or --batch")
    out = ApiClient(api, timeout=wait + 30).post(
        f"/api/devices/{device}/commands", {"op": op, "args": args, "ttl": ttl, "wait": wait}
    )
    click.echo(json.dumps(out, indent=2))
    if out["status"] not in ("ok", "sent", "queued"):
        raise CliError(f"{device} answered {out['status']} (result {out.get('result')})")
    if out["status"] in ("sent", "queued") and wait > 0:
        raise CliError(
            f"no ACK from {device} within {wait:g} s; is it online? (`idufleet devices`)"
        )


@click.group("quarantine")
def quarantine() -> None:
    """Messages the store refused to commit (kept raw; replay them after a fix)."""


@quarantine.command("list")
@_api_option
@click.option("--all", "include_resolved", is_flag=True, help="Also those already replayed.")
@click.option("--limit", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON (payloads in hex) instead of a table.")
def quarantine_list(api: str | None, include_resolved: bool, limit: int, as_json: bool) -> None:
    """List quarantined messages, oldest first."""
    rows: list[dict[str, Any]] = ApiClient(api).get(
        "/api/quarantine", all="1" if include_resolved else None, limit=limit
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table("id", "device", "topic", "bytes", "attempts", "quarantined", "reason", "outcome")
    for q in rows:
        t.add_row(
            str(q["id"]),
            q["device"] or "",
            q["topic"],
            str(q["bytes"]),
            str(q["attempts"]),
            _ago(q["quarantined"]),
            q["reason"][:60],
            q["outcome"] or "",
        )
    Console().print(t)


@quarantine.command("replay")
@_api_option
@click.argument("ids", nargs=-1, type=int)
def quarantine_replay(api: str | None, ids: tuple[int, ...]) -> None:
    """Ingest quarantined messages again (IDS, or every open one): stored, duplicate, rejected
    (resolved with the reason) or failed (still quarantined). Needs IDUFLEET_API_TOKEN."""
    out = ApiClient(api).post("/api/quarantine/replay", {"ids": list(ids)} if ids else {})
    for outcome, v in out.items():
        click.echo(f"{outcome}: {v['count']}" + (f" (ids {v['ids']})" if v["ids"] else ""))
