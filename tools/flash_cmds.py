"""`idufleet flash`: MicroPython image (optional), agent and bundle onto a board over USB serial.
The work is in tools/flash.py; this parses, shows progress and maps errors to exit codes."""

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from tools import flash as F
from tools.errors import CliError


@click.command("flash")
@click.option("--port", required=True, help="Serial port of the board, e.g. /dev/ttyUSB0.")
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, path_type=Path),
    help="MicroPython image (.bin) to write with esptool first (esp32 only).",
)
@click.option("--erase", is_flag=True, help="Erase the whole flash before writing --firmware.")
@click.option(
    "--board",
    type=click.Choice(sorted([*F.BOARDS, *F.ALIASES])),
    default="esp32",
    show_default=True,
)
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Device config bundle, copied as config.json (must be mode 0600).",
)
@click.option("--no-agent", is_flag=True, help="Do not copy the agent (bundle and/or image only).")
@click.option(
    "--replace-identity", is_flag=True, help="Allow a bundle for another device than the board's."
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the REPL.")
@click.option("--dry-run", is_flag=True, help="Check everything locally and print the plan.")
def flash_cmd(
    port: str,
    firmware: Path | None,
    erase: bool,
    board: str,
    bundle: Path | None,
    no_agent: bool,
    replace_identity: bool,
    timeout: float,
    dry_run: bool,
) -> None:
    """Write MicroPython (optional), the agent (mpy-cross) and the bundle, then verify hashes."""
    try:
        plan = F.build_plan(port, board, firmware, bundle, erase, agent=not no_agent)
    except F.FlashError as e:
        raise CliError(str(e)) from e
    if dry_run:
        for line in plan.describe():
            click.echo(line)
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)

        try:
            result = F.execute(plan, progress, replace_identity=replace_identity, timeout=timeout)
        except F.FlashError as e:
            raise CliError(str(e)) from e
    click.echo(
        f"flashed {result.written} files ({result.bytes} bytes) to {port} in "
        f"{result.seconds:.1f}s; hashes verified"
    )
