"""`idufleet ca ...`: the project CA that the broker's TLS certificate and every device trust
(controller/security/ca.py holds the logic; docs/SECURITY.md the why)."""

from pathlib import Path

import click

from controller.errors import SecurityError
from controller.security import ca
from tools.errors import CliError
from tools.options import CA_DIR, dir_option

DEFAULT_DIR = CA_DIR
_dir_option = dir_option(
    "--dir", "directory", DEFAULT_DIR, "CA directory (ca.key is written owner-only)."
)


@click.group("ca")
def ca_group() -> None:
    """Project certificate authority for the broker's TLS listener."""


@ca_group.command("init")
@_dir_option
@click.option("--name", default="idufleet project CA", show_default=True, help="CA common name.")
@click.option("--days", default=ca.CA_DAYS, show_default=True, type=click.IntRange(1, 36500))
def init_cmd(directory: Path, name: str, days: int) -> None:
    """Create a new EC P-256 CA (refuses to replace an existing one)."""
    try:
        issued = ca.init_ca(directory, name, days)
    except SecurityError as e:
        raise CliError(str(e)) from e
    click.echo(
        f"CA certificate: {issued.cert} (DER for devices: {issued.cert.with_suffix('.der')})"
    )
    click.echo(f"CA key (keep private, mode 0600): {issued.key}")


@ca_group.command("issue-server")
@click.argument("hosts", nargs=-1, required=True)
@_dir_option
@click.option("--name", default="server", show_default=True, help="File name stem.")
@click.option("--days", default=ca.SERVER_DAYS, show_default=True, type=click.IntRange(1, 3650))
def issue_server_cmd(hosts: tuple[str, ...], directory: Path, name: str, days: int) -> None:
    """Issue the broker's certificate for HOST... (DNS names and/or IP addresses)."""
    try:
        issued = ca.issue_server(directory, list(hosts), name, days)
    except SecurityError as e:
        raise CliError(str(e)) from e
    click.echo(f"server certificate: {issued.cert}")
    click.echo(f"server key (mode 0600): {issued.key}")


@ca_group.command("issue-client")
@click.argument("common_name")
@_dir_option
@click.option("--days", default=ca.CLIENT_DAYS, show_default=True, type=click.IntRange(1, 3650))
def issue_client_cmd(common_name: str, directory: Path, days: int) -> None:
    """Issue a client certificate (CN = broker username) for listeners requiring one."""
    try:
        issued = ca.issue_client(directory, common_name, days)
    except SecurityError as e:
        raise CliError(str(e)) from e
    click.echo(f"client certificate: {issued.cert}")
    click.echo(f"client key (mode 0600): {issued.key}")
