"""`idufleet broker ...`: generate a secured Mosquitto setup and manage device accounts at runtime
through the dynamic security plugin (controller/security/; docs/SECURITY.md). Passwords are
written to owner-only files, printed only with --show-password."""

import json
import os
import ssl
from pathlib import Path
from typing import Any

import click

from controller.errors import SecurityError
from controller.security import dynsec
from controller.security.broker_config import (
    CREDENTIALS,
    QueueSizing,
    TlsListener,
    write_broker_dir,
)
from tools.errors import CliError
from tools.options import BROKER_DIR, dir_option

DEFAULT_DIR = BROKER_DIR
_dir_option = dir_option(
    "--dir",
    "directory",
    DEFAULT_DIR,
    "Broker directory (mosquitto.conf, dynsec.json, credentials.json).",
)


@click.group("broker")
def broker_group() -> None:
    """Secured Mosquitto: generated config, accounts and ACLs."""


@broker_group.command("init")
@_dir_option
@click.option("--port", type=int, default=1883, show_default=True, help="Plain MQTT port.")
@click.option("--no-plain", is_flag=True, help="TLS listener only.")
@click.option("--bind", default=None, help="Listen address (default: all).")
@click.option("--tls-port", type=int, default=None, help="Add a TLS listener on this port.")
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("secrets/ca"),
    show_default=True,
    help="CA directory holding ca.crt, server.crt, server.key (idufleet ca ...).",
)
@click.option("--user", default=None, help="User Mosquitto runs as when started by root.")
@click.option("--devices", type=int, default=1000, show_default=True, help="Fleet size (queues).")
@click.option(
    "--report-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between a device's reports.",
)
@click.option(
    "--outage",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds of controller outage the broker's queues must hold without dropping.",
)
@click.option("--controllers", type=int, default=1, show_default=True, help="Controller sessions.")
def init_cmd(
    directory: Path,
    port: int,
    no_plain: bool,
    bind: str | None,
    tls_port: int | None,
    ca_dir: Path,
    user: str | None,
    devices: int,
    report_interval: float,
    outage: float,
    controllers: int,
) -> None:
    """Write mosquitto.conf, the dynsec file and credentials.json (admin + controller). Queue
    limits come from --devices, --report-interval, --outage and --controllers (formula:
    docs/CONTROLLER.md, "Broker queues")."""
    tls = None
    if tls_port is not None:
        need = [ca_dir / n for n in ("ca.crt", "server.crt", "server.key")]
        missing = [str(p) for p in need if not p.exists()]
        if missing:
            raise CliError(
                f"missing {missing[0]}: run `idufleet ca init` and `idufleet ca issue-server HOST`"
            )
        ca_file, cert, key = (p.resolve() for p in need)
        tls = TlsListener(tls_port, ca_file, cert, key, bind=bind)
    if no_plain and tls is None:
        raise click.UsageError("--no-plain needs --tls-port")
    try:
        queues = QueueSizing(devices, report_interval, outage, subscribers=controllers)
        files = write_broker_dir(
            directory.resolve(), None if no_plain else port, bind, tls, user=user, queues=queues
        )
    except SecurityError as e:
        raise CliError(str(e)) from e
    click.echo(
        f"queues: {queues.max_queued_messages} messages per client"
        f" ({outage:g} s outage of {devices} devices); give the broker {queues.memory_limit} B"
    )
    click.echo(f"config: {files.conf}")
    click.echo(f"accounts (admin, controller; mode 0600): {files.credentials}")
    click.echo(f"start: mosquitto -c {files.conf}")


def _admin(directory: Path, host: str) -> dynsec.DynsecClient:
    try:
        creds: dict[str, Any] = json.loads((directory / CREDENTIALS).read_text())
    except (OSError, ValueError) as e:
        raise CliError(
            f"cannot read {directory / CREDENTIALS}: run `idufleet broker init --dir {directory}`"
        ) from e
    adm = creds["admin"]
    ctx = None
    port = creds.get("port")
    if port is None:
        port = creds["tls_port"]
        ctx = ssl.create_default_context(cafile=creds["cafile"])
    return dynsec.DynsecClient(host, int(port), adm["username"], adm["password"], tls=ctx)


def _run(directory: Path, host: str, action: Any) -> Any:
    try:
        with _admin(directory, host) as admin:
            return action(admin)
    except SecurityError as e:
        raise CliError(str(e)) from e


_host_option = click.option("--host", default="127.0.0.1", show_default=True)


@broker_group.group("device")
def device_group() -> None:
    """Device broker accounts (one role per device)."""


@device_group.command("add")
@click.argument("site")
@click.argument("device")
@_dir_option
@_host_option
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the generated password here (mode 0600).",
)
@click.option("--show-password", is_flag=True, help="Print the generated password.")
def add_cmd(
    site: str,
    device: str,
    directory: Path,
    host: str,
    password_file: Path | None,
    show_password: bool,
) -> None:
    """Create DEVICE's account and ACL role; no broker restart."""
    password = dynsec.new_password()
    if password_file is not None:
        try:
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise CliError(f"{password_file} exists: choose a new file") from e
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    _run(directory, host, lambda a: a.create_device(site, device, password))
    click.echo(f"created broker account {device} (role {dynsec.device_role(site, device)})")
    if show_password:
        click.echo(password)


def _simple(name: str, what: str) -> None:
    @device_group.command(name, help=f"{name.capitalize()} USERNAME's broker account ({what}).")
    @click.argument("username")
    @_dir_option
    @_host_option
    def cmd(username: str, directory: Path, host: str) -> None:
        _run(directory, host, lambda a: getattr(a, f"{name}_client")(username))
        click.echo(f"{username}: {what}")


_simple("disable", "disabled and disconnected")
_simple("enable", "enabled")


@device_group.command("delete")
@click.argument("site")
@click.argument("device")
@_dir_option
@_host_option
def delete_cmd(site: str, device: str, directory: Path, host: str) -> None:
    """Delete DEVICE's account and role (a connected device is disconnected)."""
    _run(directory, host, lambda a: a.delete_device(site, device))
    click.echo(f"{device}: deleted")


@device_group.command("list")
@_dir_option
@_host_option
def list_cmd(directory: Path, host: str) -> None:
    """List broker accounts."""
    for name in _run(directory, host, lambda a: a.list_clients()):
        click.echo(name)
