"""`idufleet protocol ...`: inspect and produce wire messages (decode a captured payload, list
the metric registry). Useful in the field with a packet capture or mosquitto_sub -F %x."""

import json

import click

from protocol import ProtocolError, Signer, decode, topics
from protocol import messages as M
from protocol.metrics import REGISTRY
from protocol.vectors import to_json
from tools.errors import CliError


@click.group()
def protocol() -> None:
    """Wire protocol utilities (docs/PROTOCOL.md)."""


@protocol.command("decode")
@click.argument("topic")
@click.argument("payload_hex")
@click.option("--key-hex", help="32-byte device key in hex; verifies the tag when given.")
def decode_cmd(topic: str, payload_hex: str, key_hex: str | None) -> None:
    """Decode (and with --key-hex verify) one payload captured on TOPIC."""
    try:
        topics.parse(topic)
    except (ValueError, ProtocolError):
        raise click.BadParameter(
            f"{topic!r} is not an idufleet topic; give one like {topics.PREFIX}porto/ap-1/rep "
            f"({topics.PREFIX}SITE/DEVICE/CHANNEL)",
            param_hint="TOPIC",
        ) from None
    try:
        payload = bytes.fromhex(payload_hex)
    except ValueError:
        raise click.BadParameter(
            f"{payload_hex!r} is not hex; give the payload as hex digits (as mosquitto_sub -F %x "
            "prints it), like 8a00...",
            param_hint="PAYLOAD_HEX",
        ) from None
    signer = None
    if key_hex:
        try:
            signer = Signer(bytes.fromhex(key_hex))
        except (ValueError, ProtocolError) as e:
            raise click.BadParameter("the key is 64 hex digits (32 bytes)") from e
    try:
        msg = decode(payload, topic, signer)
    except ProtocolError as e:
        raise CliError(f"payload refused: {e.code} ({e.detail or 'see docs/PROTOCOL.md'})") from e
    click.echo(json.dumps(to_json(msg), indent=2))


@protocol.command("metrics")
def metrics_cmd() -> None:
    """List the metric registry: id, name, unit, kind, scale."""
    for mid, (name, unit, kind, scale) in sorted(REGISTRY.items()):
        click.echo(f"{mid:>4}  {name:<18} {unit:<9} {kind:<8} 1e-{scale}")


@protocol.command("types")
def types_cmd() -> None:
    """List message types and their channels."""
    for t, name in sorted(M.NAMES.items()):
        click.echo(f"{t:>2}  {name:<8} {M.CHANNEL[t]}")
