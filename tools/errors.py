"""CLI error mapping: runtime failures exit 1, usage errors exit 2 (click's own convention)."""

import click


class CliError(click.ClickException):
    """A runtime failure with a one-line message saying what is wrong and what to do."""

    exit_code = 1
