"""Click options several command groups share, defined once."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

BROKER_DIR = Path("secrets/broker")
CA_DIR = Path("secrets/ca")


def dir_option(
    flag: str, dest: str | None, default: Path, help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A directory option (not a file) with a shown default."""
    decls = [flag, dest] if dest else [flag]
    return click.option(
        *decls,
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=True,
        help=help,
    )


def wifi_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--wifi-ssid and --wifi-password-file: the password is read from a file (first line) or
    asked at a hidden prompt, never taken as an argument (it would sit in shell history and
    in `ps`). The command gets `wifi_ssid` and `wifi_password_file`; read_wifi() turns them
    into the bundle's `wifi` field."""
    f = click.option(
        "--wifi-password-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File whose first line is the Wi-Fi password ('-': stdin). Default: ask.",
    )(f)
    return click.option(
        "--wifi-ssid", default=None, help="Wi-Fi network the board joins (an esp32 needs one)."
    )(f)


def read_wifi(ssid: str | None, password_file: Path | None) -> dict[str, Any] | None:
    """The bundle's `wifi` field, or None without --wifi-ssid. Raises click.UsageError for a
    password file without an SSID, CliError (via BundleError) for what WPA2 refuses."""
    from controller.errors import ControllerError
    from controller.provisioning.bundles import wifi_block
    from tools.errors import CliError

    if ssid is None:
        if password_file is not None:
            raise click.UsageError("--wifi-password-file needs --wifi-ssid")
        return None
    if password_file is None:
        pw = click.prompt(
            f"Wi-Fi password for {ssid} (empty: open network)",
            default="",
            hide_input=True,
            show_default=False,
            err=True,
        )
    elif str(password_file) == "-":
        import sys

        pw = sys.stdin.readline()
    else:
        try:
            pw = password_file.read_text().splitlines()[0] if password_file.stat().st_size else ""
        except OSError as e:
            raise CliError(
                f"cannot read --wifi-password-file: {e.strerror}: {password_file}"
            ) from None
    try:
        return wifi_block(ssid, pw.rstrip("\r\n") or None)
    except ControllerError as e:
        raise CliError(str(e)) from None


def api_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--api: the controller's API URL (every command that talks to a controller spells it so)."""
    return click.option(
        "--api",
        "--controller",  # the old spelling of provision / rotate-key / revoke, kept working
        "api",
        default=None,
        help="Controller API URL (default: $IDUFLEET_API, then the config's [cli] api, then "
        "http://<api.host>:<api.port> from the config).",
    )(f)


def token_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--token: the bearer token (an operator's, or api.token)."""
    return click.option(
        "--token",
        default=None,
        help="Operator token (default: $IDUFLEET_API_TOKEN, then the config's [cli] token, "
        "then its api.token).",
    )(f)
