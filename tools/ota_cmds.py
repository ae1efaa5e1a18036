"""`idufleet ota`: offer a release to a device and watch its transfer, through the controller's
HTTP API (--api / IDUFLEET_API; an operator's token). Rollouts are a later slice (docs/OTA.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tools.api_client import ApiClient
from tools.options import api_option


@click.group("ota")
def ota_group() -> None:
    """Over-the-air updates: offer a signed release to a device (docs/OTA.md)."""


@ota_group.command("offer")
@api_option
@click.argument("device")
@click.argument("release_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ttl", type=int, default=3600, show_default=True, help="Seconds the offer holds.")
def offer_cmd(api: str | None, device: str, release_file: Path, ttl: int) -> None:
    """Offer RELEASE_FILE (built by `idufleet release build`; a path the controller can read)
    to DEVICE, which then fetches it from the controller."""
    out = ApiClient(api).post(
        f"/api/devices/{device}/ota", {"release": str(release_file.resolve()), "ttl": ttl}
    )
    click.echo(json.dumps(out, indent=2))


@ota_group.command("status")
@api_option
@click.argument("device")
def status_cmd(api: str | None, device: str) -> None:
    """DEVICE's transfer as the controller sees it: state, result, chunks done / served."""
    click.echo(json.dumps(ApiClient(api).get(f"/api/devices/{device}/ota"), indent=2))
