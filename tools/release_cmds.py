"""`idufleet release ...`: the release key and signed releases, made offline on the operator's
machine (tools/release.py holds the logic, docs/OTA.md the why). Usage errors exit 2, refusals
and other runtime failures exit 1, each with one line saying what to do."""

from __future__ import annotations

import time
from pathlib import Path

import click

from protocol import manifest as MF
from tools import release as R
from tools.errors import CliError

DEFAULT_KEY = Path("secrets/release/release.key")


def _public(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    try:
        return R.parse_public(value) if value is not None else None
    except R.ReleaseError as e:
        raise click.BadParameter(str(e)) from None


release_key_option = click.option(
    "--release-key",
    "release_key",
    default=None,
    callback=_public,
    help="Release public key for the bundle (hex or release.pub); devices verify updates with it.",
)


@click.group("release")
def release_group() -> None:
    """Signed releases of the agent and firmware (docs/OTA.md)."""


@release_group.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_KEY,
    show_default=True,
    help="Private key file (mode 0600); the public key goes next to it as .pub.",
)
def keygen_cmd(out: Path) -> None:
    """Create an Ed25519 release key pair (refuses to replace one). Keep the private key off
    the controller host; put the public key into device bundles (provision --release-key)."""
    if out.suffix == R.PUBLIC_SUFFIX:
        raise click.BadParameter("name the private key *.key; the .pub is written beside it")
    try:
        pub_path, pub = R.keygen(out)
    except R.ReleaseError as e:
        raise CliError(str(e)) from None
    click.echo(f"private key (keep offline, mode 0600): {out}")
    click.echo(f"public key: {pub_path}")
    click.echo(f"public key hex: {pub.hex()}")
    click.echo(f"key id: {MF.key_id(pub).hex()}")


def _version(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, str]:
    try:
        return R.parse_version(value)
    except R.ReleaseError as e:
        raise click.BadParameter(str(e)) from None


@release_group.command("build")
@click.option(
    "--version", "version", required=True, callback=_version, help="42, or 1.4.2 (=1004002)."
)
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A MicroPython image for the board (esp32 only), shipped with the agent.",
)
@click.option("--board", default="esp32", show_default=True, help="A row of firmware/boards.py.")
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_KEY,
    show_default=True,
    help="Release private key (from release keygen).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--expires-days",
    type=click.IntRange(1, 3650),
    default=R.DEFAULT_EXPIRY_DAYS,
    show_default=True,
    help="Devices refuse the release after this (re-sign for a longer rollout).",
)
@click.option(
    "--floor",
    type=click.IntRange(0),
    default=None,
    help="Anti-rollback floor devices keep after installing [default: this version].",
)
@click.option(
    "--from",
    "min_from",
    type=click.IntRange(0),
    default=0,
    help="Lowest installed version this release may be installed over [default: any].",
)
@click.option("--kind", type=click.Choice(["ap", "sensor"]), default=None, help="Device class.")
@click.option("--chunk", type=click.IntRange(MF.MIN_CHUNK, MF.MAX_CHUNK), default=R.DEFAULT_CHUNK)
@click.option(
    "--next-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rotate: the new release private key, which co-signs and replaces --key on devices.",
)
@click.option("--no-agent", is_flag=True, help="Firmware image only (needs --firmware).")
def build_cmd(
    version: tuple[int, str],
    firmware: Path | None,
    board: str,
    key: Path,
    out: Path,
    expires_days: int,
    floor: int | None,
    min_from: int,
    kind: str | None,
    chunk: int,
    next_key: Path | None,
    no_agent: bool,
) -> None:
    """Compile the agent for the board, pack it (and --firmware), sign the manifest, write
    OUT: the manifest followed by the payload."""
    number, display = version
    try:
        board = R.board_name(board)
    except R.ReleaseError as e:
        raise click.BadParameter(str(e), param_hint="--board") from None
    if firmware is not None and not R.takes_image(board):
        raise click.BadParameter(f"board {board} takes no image: drop it", param_hint="--firmware")
    if chunk & (chunk - 1):
        raise click.BadParameter(f"{chunk} is not a power of two: use 2048", param_hint="--chunk")
    if floor is not None and floor > number:
        raise click.BadParameter(f"at most the version ({number})", param_hint="--floor")
    if min_from >= number:
        raise click.BadParameter(f"below the version ({number})", param_hint="--from")
    if no_agent and firmware is None:
        raise click.UsageError("--no-agent needs --firmware IMAGE.bin")
    if out.exists():
        raise CliError(f"{out} exists: remove it or choose another --out")
    try:
        signer = R.load_private(key)
        rotate = R.load_private(next_key) if next_key is not None else None
        image = R.check_firmware(firmware, board) if firmware is not None else None
        files = [] if no_agent else R.agent_files(board)
        now = int(time.time())
        spec = R.Spec(
            number,
            display,
            board,
            now + expires_days * 86400,
            floor=floor,
            min_from=min_from,
            kind=kind,
            chunk=chunk,
            created=now,
        )
        manifest, payload = R.build_manifest(spec, files, image, signer, rotate)
        R.write_release(out, manifest, payload)
    except R.ReleaseError as e:
        raise CliError(str(e)) from None
    m = MF.parse(manifest)
    click.echo(f"wrote {out}: {display} (#{number}) for {m.board}, {m.nfiles} files", nl=False)
    click.echo(f"{' + firmware' if image else ''}, {m.total} bytes in {m.chunks} chunks")
    click.echo(f"signed by key id {m.key_id.hex()}")
    if m.next_key is not None:
        click.echo(f"devices switch to key id {MF.key_id(m.next_key).hex()} after installing it")


@release_group.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--pubkey", default=None, help="Release public key: 64 hex digits or a .pub file.")
def inspect_cmd(file: Path, pubkey: str | None) -> None:
    """Print a release and check it: payload against the manifest always, the signature with
    --pubkey. Exit 1 when anything does not check."""
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {file}: {e.strerror}") from None
    try:
        public = R.parse_public(pubkey) if pubkey is not None else None
    except R.ReleaseError as e:
        raise click.BadParameter(str(e), param_hint="--pubkey") from None
    try:
        m, _ = R.open_release(data, public)
    except R.ReleaseError as e:
        raise CliError(f"{file}: {e.code}: {e}") from None
    for line in R.describe(m):
        click.echo(line)
    click.echo("payload      ok (size, digest, every chunk and file)")
    if public is None:
        click.echo("signature    not checked: pass --pubkey")
    else:
        click.echo(f"signature    ok (key id {MF.key_id(public).hex()})")
