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
