"""`idufleet job create|status|list|cancel`: fleet jobs through the controller's HTTP API
(--api / IDUFLEET_API): one operation to every device a selector names, offline ones when
they come back."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tools.api_client import ApiClient
from tools.errors import CliError
from tools.fleet_cmds import command_args
from tools.options import api_option

_OPS = ("ping", "reboot", "diagnostics", "set-config")
_DONE = ("succeeded", "failed", "expired", "timed_out", "canceled")
POLL_S = 0.5


@click.group("job")
def job_group() -> None:
    """Act on a zone, a tag, a kind or the whole fleet; offline devices get it when they return."""


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k or not val:
            raise click.BadParameter(f"{v!r}: a tag is key=value", param_hint="--tag")
        out[k] = val
    return out


def _summary_line(job: dict[str, Any]) -> str:
    s = job["summary"]
    states = ", ".join(f"{k} {v}" for k, v in s["states"].items() if v)
    results = ", ".join(f"{k} {v}" for k, v in s["results"].items())
    return f"job {job['id']} {job['state']}: {s['total']} devices ({states or 'none'})" + (
        f"; results: {results}" if results else ""
    )


@job_group.command("create")
@api_option
@click.argument("op", type=click.Choice(_OPS))
@click.option("--device", "devices", multiple=True, help="A device id (repeat for more).")
@click.option("--zone", default=None)
@click.option("--site", default=None)
@click.option("--tag", "tags", multiple=True, help="key=value (repeat: all must match).")
@click.option("--kind", type=click.Choice(["ap", "sensor"]), default=None)
@click.option("--version", default=None, help="Only devices running this firmware version.")
@click.option("--all", "all_", is_flag=True, help="The whole fleet.")
@click.option("--online-only", is_flag=True, help="Only devices online now.")
@click.option("--continuous", is_flag=True, help="Devices that match later get it too.")
@click.option("--ttl", default="1d", show_default=True, help="How long offline devices may wait.")
@click.option("--rate", type=float, default=100.0, show_default=True, help="Devices per second.")
@click.option("--interval", type=int, default=None, help="set-config: seconds between reports.")
@click.option("--batch", type=int, default=None, help="set-config: samples per message.")
@click.option("--wait", is_flag=True, help="Show progress until every device is settled.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def create(
    api: str | None,
    op: str,
    devices: tuple[str, ...],
    zone: str | None,
    site: str | None,
    tags: tuple[str, ...],
    kind: str | None,
    version: str | None,
    all_: bool,
    online_only: bool,
    continuous: bool,
    ttl: str,
    rate: float,
    interval: int | None,
    batch: int | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Send OP to every device the selector names (needs an operator's token)."""
    args = command_args(op, interval, batch)
    selector: dict[str, Any] = {"devices": list(devices), "tags": _tags(tags)}
    for k, v in (("zone", zone), ("site", site), ("kind", kind), ("version", version)):
        if v is not None:
            selector[k] = v
    if online_only:
        selector["online_only"] = True
    if all_:
        selector["all"] = True
    client = ApiClient(api)
    job = client.post(
        "/api/jobs",
        {
            "op": op,
            "args": args,
            "selector": selector,
            "ttl": ttl,
            "rate": rate,
            "continuous": continuous,
        },
    )
    if wait:
        job = _watch(client, job)
    click.echo(json.dumps(job, indent=2) if as_json else _summary_line(job))
    if wait and job["summary"]["states"].get("failed", 0) + job["summary"]["states"].get(
        "timed_out", 0
    ):
        raise CliError(_summary_line(job))


def _watch(client: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    console = Console(stderr=True)
    with Progress(
        TextColumn("job {task.fields[id]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("job", total=job["summary"]["total"], id=job["id"], detail="")
        while True:
            s = job["summary"]
            done = sum(s["states"].get(k, 0) for k in _DONE)
            detail = f"queued {s['states']['queued']} sent {s['states']['sent']}"
            bar.update(task, total=s["total"], completed=done, detail=detail)
            if job["state"] != "running" or (done == s["total"] and not job["continuous"]):
                return job
            time.sleep(POLL_S)
            job = client.get(f"/api/jobs/{job['id']}")


@job_group.command("status")
@api_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def status(api: str | None, job_id: int, as_json: bool) -> None:
    """A job's summary (counts by state and by result) and its devices."""
    job = ApiClient(api).get(f"/api/jobs/{job_id}")
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    click.echo(_summary_line(job))
    t = Table("device", "state", "attempts", "result")
    for e in job.get("executions", []):
        t.add_row(e["device"], e["state"], str(e["attempts"]), e["result"] or "")
    Console().print(t)


@job_group.command("list")
@api_option
@click.option("--json", "as_json", is_flag=True)
def list_cmd(api: str | None, as_json: bool) -> None:
    """Recent jobs, newest first."""
    jobs = ApiClient(api).get("/api/jobs")
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    t = Table("id", "op", "selector", "state", "devices", "succeeded", "queued", "created")
    for j in jobs:
        st = j["summary"]["states"]
        t.add_row(
            str(j["id"]),
            j["op"],
            json.dumps(j["selector"]),
            j["state"],
            str(j["summary"]["total"]),
            str(st.get("succeeded", 0)),
            str(st.get("queued", 0)),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created"])),
        )
    Console().print(t)


@job_group.command("cancel")
@api_option
@click.argument("job_id", type=int)
def cancel(api: str | None, job_id: int) -> None:
    """Stop a job: what is still queued is canceled; a sent command's ACK is still recorded."""
    click.echo(_summary_line(ApiClient(api).post(f"/api/jobs/{job_id}/cancel", {})))
