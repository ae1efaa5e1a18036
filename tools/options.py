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
