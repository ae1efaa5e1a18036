"""`idufleet devices`, `idufleet metrics`, `idufleet command`: read and act through the
controller's HTTP API (--api / IDUFLEET_API), so they work against a remote controller."""

from __future__ import annotations

import difflib
import io
import json
import re
import time
import urllib.parse
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from protocol import messages as M
from protocol import metrics as pm
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


# Columns of `devices` in the order they are given up when the terminal is narrow: the id
# is never dropped and never cut (it folds onto a second line only when it alone is too wide).
_DEVICE_COLUMNS = ("device", "presence", "zone", "last seen", "kind", "status", "firmware", "epoch")


def _device_cells(d: dict[str, Any]) -> dict[str, str]:
    return {
        "device": d["id"],
        "presence": "[green]online[/]" if d["online"] else "[red]offline[/]",
        "zone": d["zone"],
        "last seen": _ago(d["last_seen"]),
        "kind": d["kind"],
        "status": d["status"],
        "firmware": d["firmware"] or "-",
        "epoch": str(d["boot_epoch"] if d["boot_epoch"] is not None else "-"),
    }


def devices_table(rows: list[dict[str, Any]], width: int) -> Table:
    """The `devices` table for a console `width` columns wide: every id in full; the columns
    least needed are dropped (last first) until the rest fit without cutting a cell."""
    from rich.console import Console as _C
    from rich.measure import Measurement

    cells = [_device_cells(d) for d in rows]
    cols = list(_DEVICE_COLUMNS)
    probe = _C(width=10_000, file=io.StringIO(), color_system=None)
    while True:
        t = Table(box=None if width < 60 else box.SIMPLE_HEAD, pad_edge=False)
        for c in cols:
            if c == "device":
                t.add_column(c, overflow="fold")
            else:
                t.add_column(c, no_wrap=True)
        for row in cells:
            t.add_row(*(row[c] for c in cols))
        need = Measurement.get(probe, probe.options, t).maximum
        if need <= width or len(cols) == 1:
            return t
        cols.pop()


def _tag_filter(tags: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for t in tags:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise click.BadParameter(
                f"{t!r}: give KEY=VALUE, like --tag street=flores", param_hint="--tag"
            )
        out[k] = v
    return out


def unknown(what: str, name: str, known: list[str] | set[str]) -> CliError:
    """The error for a name that matches nothing, with the close ones (or all, when few)."""
    names = sorted(set(known))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(close) + "?"
    elif names and len(names) <= 30:
        hint = "known: " + ", ".join(names)
    elif names:
        hint = f"{len(names)} known, like " + ", ".join(names[:10]) + "; see `idufleet devices`"
    else:
        hint = "none registered yet"
    return CliError(f"no {what} {name!r}; {hint}")


def check_zone(client: ApiClient, zone: str) -> None:
    """Raise CliError when `zone` is neither configured (fleet.zones) nor any device's zone."""
    known = set(client.get("/api/zones").get("zones") or [])
    known |= {d["zone"] for d in client.get("/api/devices")}
    if zone not in known:
        raise unknown("zone", zone, known)


def get_device(client: ApiClient, device: str) -> dict[str, Any]:
    """GET /api/devices/ID, or CliError naming the close ids when there is no such device."""
    try:
        return client.get(f"/api/devices/{urllib.parse.quote(device, safe='')}")  # type: ignore[no-any-return]
    except CliError as e:
        if "404" not in str(e.message):
            raise
    raise unknown("device", device, [d["id"] for d in client.get("/api/devices")])


@click.command("devices")
@_api_option
@click.option("--site", default=None, help="Only devices of this site.")
@click.option("--zone", default=None, help="Only devices of this zone.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only devices with this tag (repeatable).",
)
@click.option("--kind", default=None)
@click.option("--online/--offline", "online", default=None, help="Only devices online / offline.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def devices(
    api: str | None,
    site: str | None,
    zone: str | None,
    tags: tuple[str, ...],
    kind: str | None,
    online: bool | None,
    as_json: bool,
) -> None:
    """List registered devices with presence (ids always in full)."""
    want = _tag_filter(tags)
    client = ApiClient(api)
    rows: list[dict[str, Any]] = client.get(
        "/api/devices",
        site=site,
        zone=zone,
        kind=kind,
        online=None if online is None else str(online).lower(),
    )
    rows = [d for d in rows if all((d.get("tags") or {}).get(k) == v for k, v in want.items())]
    if not rows and zone is not None:
        check_zone(client, zone)
    if not rows and site is not None:
        sites = {d["site"] for d in client.get("/api/devices")}
        if site not in sites:
            raise unknown("site", site, sites)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console = Console()
    console.print(devices_table(rows, console.width))


def _with_unit(value: Any, unit: str | None) -> str:
    v = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{v} {unit}" if unit else v


@click.command("show")
@_api_option
@click.argument("device")
@click.option("--events", type=int, default=10, show_default=True, help="How many recent events.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables.")
def device_show(api: str | None, device: str, events: int, as_json: bool) -> None:
    """One device: latest values with units, presence history, last events, diagnostics."""
    d = get_device(ApiClient(api), device)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    console = Console()
    console.print(
        f"[bold]{d['id']}[/]  site {d['site']}  zone {d['zone']}  kind {d['kind']}  "
        f"status {d['status']}  {'[green]online[/]' if d['online'] else '[red]offline[/]'}"
        f"  last seen {_ago(d['last_seen'])}",
        soft_wrap=True,
    )
    console.print(
        f"firmware {d.get('firmware') or '-'}  board {d.get('board') or '-'}  "
        f"boot epoch {d.get('boot_epoch') if d.get('boot_epoch') is not None else '-'}  "
        f"tags {', '.join(f'{k}={v}' for k, v in (d.get('tags') or {}).items()) or '-'}",
        soft_wrap=True,
    )
    t = Table("metric", "value", "at (UTC)", title="latest values")
    for name, p in (d.get("latest") or {}).items():
        t.add_row(name, _with_unit(p["value"], p.get("unit")), _utc(p["ts"]))
    console.print(t)
    t = Table("at (UTC)", "presence", "reason", title="presence")
    for p in (d.get("presence") or [])[-events:]:
        t.add_row(_utc(p["ts"]), p["state"], p.get("reason") or "")
    console.print(t)
    t = Table("at (UTC)", "code", "severity", "text", title="last events")
    for e in (d.get("events") or [])[:events]:
        code = _EV.get(e["code"], str(e["code"]))
        t.add_row(_utc(e["ts"]), code, str(e.get("severity") or ""), e.get("text") or "")
    console.print(t)
    diag = d.get("diagnostics")
    if diag:
        t = Table("field", "value", title=f"diagnostics ({_utc(diag['acked'])})")
        for k, v in diag["values"].items():
            t.add_row(k, _with_unit(v, _DG_UNITS.get(k)))
        console.print(t)
    else:
        console.print(f"no diagnostics yet: `idufleet command {d['id']} diagnostics`")


_EV = {v: k[3:].lower() for k, v in vars(M).items() if k.startswith("EV_")}
_DG_UNITS = {
    "heap_free": "B",
    "heap_high_water": "B",
    "heap_size": "B",
    "heap_peak": "B",
    "uptime": "s",
    "rssi": "dBm",
    "buffer_depth": "reports",
    "dropped": "reports",
}


def _utc(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


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
    for name, value in (("--since", since), ("--until", until)):
        if value is not None and not _TIME.fullmatch(value):
            raise click.BadParameter(
                f"{value!r} is not a time; give unix seconds (1718000000) or a duration back "
                "from now: 90s, 15m, 6h, 30d, 2w",
                param_hint=name,
            )
    try:
        pm.lookup(metric)
    except KeyError:
        close = difflib.get_close_matches(metric, list(pm.BY_NAME), n=5, cutoff=0.5)
        raise click.BadParameter(
            f"no metric {metric!r}; "
            + ("did you mean " + ", ".join(close) + "?" if close else "")
            + " `idufleet protocol metrics` lists them (a name or a numeric id)",
            param_hint="--metric",
        ) from None
    client = ApiClient(api)
    if device is not None:
        get_device(client, device)
    else:
        assert zone is not None
        check_zone(client, zone)
    out = client.get(
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
            t.add_row(*row, _with_unit(p["value"], unit))
    Console().print(t)


_TIME = re.compile(r"\d+(\.\d+)?[smhdw]?")

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
    args = command_args(op, interval, batch)
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


def command_args(op: str, interval: int | None, batch: int | None) -> dict[str, Any]:
    """A command's args as the API takes them ({field number: value}); set-config needs at least
    one setting (click.UsageError otherwise). Shared by `command` and `job create`."""
    args: dict[str, Any] = {}
    if op == "set-config":
        if interval is not None:
            args[str(M.G_INTERVAL)] = interval
        if batch is not None:
            args[str(M.G_BATCH)] = batch
        if not args:
            raise click.UsageError("set-config needs --interval and/or --batch")
    return args
