"""`idufleet provision`, `idufleet claim ...`, `idufleet device rotate-key|revoke`: the field
provisioning flows of docs/PROVISIONING.md. Commands parse, call controller/provisioning (or the
controller's HTTP API), and print; keys and passwords are printed only with --show-key.
Registered by tools/cli.py with `provision_cmds.register(cli)`."""

from __future__ import annotations

import json
import re
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from controller.errors import ControllerError, SecurityError
from controller.provisioning import tokens as T
from controller.provisioning.bundles import (
    broker_block,
    claim_bundle,
    device_bundle,
    write_bundle,
)
from controller.registry import zone_problem
from controller.security import dynsec
from controller.security.broker_config import CREDENTIALS
from protocol import ProtocolError
from protocol.topics import check_id
from tools.api_client import ApiClient
from tools.errors import CliError
from tools.options import (
    BROKER_DIR,
    api_option,
    dir_option,
    read_wifi,
    token_option,
    wifi_options,
)
from tools.release_cmds import release_key_option

CLAIM_CREDENTIALS = "claim.json"  # beside credentials.json: the bootstrap account's password
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="IDUFLEET_CONFIG",
    help="Controller TOML config (store and master key).",
)
_broker_dir_option = dir_option(
    "--broker-dir",
    None,
    BROKER_DIR,
    "Broker directory from `idufleet broker init` (admin credentials).",
)
_broker_host_option = click.option(
    "--broker-host", default="127.0.0.1", show_default=True, help="Broker host boards connect to."
)


def parse_ttl(text: str) -> float:
    """7d, 12h, 90m, 3600s or plain seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use a duration like 7d, 12h, 90m", param_hint="--ttl")
    return float(m.group(1)) * _TTL_UNITS.get(m.group(2) or "s", 1)


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read {path}: {fix}") from e


def _write_secret_json(path: Path, doc: dict[str, Any]) -> None:
    try:
        write_bundle(path, doc)
    except ControllerError as e:
        raise CliError(str(e)) from None


@contextmanager
def _admin(broker_dir: Path, host: str) -> Iterator[dynsec.DynsecClient]:
    creds = _read_json(
        broker_dir / CREDENTIALS, f"run `idufleet broker init --dir {broker_dir}` first"
    )
    port = int(creds.get("port") or creds.get("tls_port") or 1883)
    adm = creds["admin"]
    try:
        with dynsec.DynsecClient(host, port, adm["username"], adm["password"]) as admin:
            yield admin
    except SecurityError as e:
        raise CliError(str(e)) from None


def _broker_port(broker_dir: Path, given: int | None) -> int:
    if given is not None:
        return given
    creds = _read_json(broker_dir / CREDENTIALS, "pass --broker-port")
    return int(creds.get("port") or creds.get("tls_port") or 1883)


def _load_config(config_path: Path | None) -> Any:
    from controller.config import discover

    try:
        return discover(config_path)[0]
    except ControllerError as e:
        raise CliError(str(e)) from None


def _store_and_master(config_path: Path | None) -> tuple[Any, Any]:
    from controller.config import discover
    from controller.keys import load_master
    from controller.store import open_store

    try:
        cfg = discover(config_path)[0]
        master = load_master(cfg.keys, create=False)
        return open_store(cfg.store, create=False), master
    except ControllerError as e:
        raise CliError(str(e)) from None


# --------------------------------------------------------------------------- claim
@click.group("claim")
def claim_group() -> None:
    """Claim tokens: boards prepared in bulk fetch their identity at first boot."""


@claim_group.command("setup")
@_broker_dir_option
@_broker_host_option
@click.option("--controller-user", default="controller", show_default=True)
def claim_setup(broker_dir: Path, broker_host: str, controller_user: str) -> None:
    """Create the bootstrap account `claim` and give the controller account the responder role."""
    path = broker_dir / CLAIM_CREDENTIALS
    if path.exists():
        raise CliError(f"{path} exists: the bootstrap account is already set up")
    from controller.provisioning.claim_service import CLAIM_USER, bootstrap_commands

    password = dynsec.new_password()
    with _admin(broker_dir, broker_host) as admin:
        try:
            admin.run(bootstrap_commands(password, controller_user))
        except SecurityError as e:
            raise CliError(str(e)) from None
    _write_secret_json(path, {"username": CLAIM_USER, "password": password})
    click.echo(f"bootstrap account {CLAIM_USER} created; password in {path} (mode 0600)")


@claim_group.command("create")
@_config_option
@click.option("--zone", required=True, help="Zone the boards will belong to.")
@click.option("--count", type=int, default=1, show_default=True)
@click.option("--ttl", default="7d", show_default=True, help="Token lifetime: 7d, 12h, 90m...")
@click.option("--kind", type=click.Choice(["ap", "sensor"]), default="ap", show_default=True)
@click.option("--site", default="porto", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("claims"),
    show_default=True,
    help="Folder for the bundles (claim-<token id>.json, mode 0600).",
)
@_broker_dir_option
@_broker_host_option
@click.option("--broker-port", type=int, default=None, help="Default: the broker dir's port.")
@click.option("--interval", type=int, default=60, show_default=True)
@release_key_option
@wifi_options
def claim_create(
    config_path: Path | None,
    zone: str,
    count: int,
    ttl: str,
    kind: str,
    site: str,
    out: Path,
    broker_dir: Path,
    broker_host: str,
    broker_port: int | None,
    interval: int,
    release_key: bytes | None,
    wifi_ssid: str | None,
    wifi_password_file: Path | None,
) -> None:
    """Issue COUNT one-time tokens for ZONE and write one claim bundle per board."""
    seconds = parse_ttl(ttl)
    wifi = read_wifi(wifi_ssid, wifi_password_file)
    extra: dict[str, Any] = {"interval": interval}
    if wifi is not None:
        extra["wifi"] = wifi
    try:
        T.check_request_fields(site, zone, kind, seconds, count)
    except ControllerError as e:
        raise click.BadParameter(str(e)) from None
    zones = _load_config(config_path).fleet.zones
    try:  # an unknown zone is refused before any file, token or folder exists
        T.check_request_fields(site, zone, kind, seconds, count, zones)
    except ControllerError as e:
        raise CliError(str(e)) from None
    claim_creds = _read_json(
        broker_dir / CLAIM_CREDENTIALS, f"run `idufleet claim setup --broker-dir {broker_dir}`"
    )
    port = _broker_port(broker_dir, broker_port)
    broker = broker_block(broker_host, port, claim_creds["username"], claim_creds["password"])
    store, master = _store_and_master(config_path)
    try:
        ts = T.TokenStore(store, master)
        issued = ts.issue(site, zone, kind, count, seconds, zones=zones)
        written: list[Path] = []
        try:
            for tok in issued:
                path = out / f"claim-{tok.id}.json"
                written.append(write_bundle(path, claim_bundle(tok, broker, release_key, **extra)))
        except (ControllerError, OSError) as e:
            for p in written:
                p.unlink(missing_ok=True)
            ts.delete([t.id for t in issued])
            raise CliError(f"{e}; no token was issued") from None
    except ControllerError as e:
        raise CliError(str(e)) from None
    finally:
        store.close()
    click.echo(f"issued {len(issued)} claim token(s) for {site}/{zone} ({kind}), valid {ttl}")
    click.echo(f"bundles (mode 0600) in {out}/")


@claim_group.command("list")
@_config_option
@click.option("--zone", default=None)
def claim_list(config_path: Path | None, zone: str | None) -> None:
    """Tokens with their state (open, used, expired); never their secrets."""
    store, master = _store_and_master(config_path)
    try:
        for rec in T.TokenStore(store, master).list(zone):
            p = rec.public()
            click.echo(
                f"{p['id']}  {p['zone']:<16} {p['kind']:<6} {p['state']:<8} {p['device'] or ''}"
            )
    finally:
        store.close()


@claim_group.command("serve")
@_config_option
@_broker_dir_option
@_broker_host_option
@click.option(
    "--metrics-port", type=int, default=None, help="Serve idufleet_claims_total on this port."
)
def claim_serve(
    config_path: Path | None, broker_dir: Path, broker_host: str, metrics_port: int | None
) -> None:
    """Answer claim requests until SIGTERM/SIGINT (uses the controller's MQTT account)."""
    from controller.provisioning.claim_service import ClaimCounters, ClaimResponder, ClaimService

    cfg = _load_config(config_path)
    store, master = _store_and_master(config_path)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with _admin(broker_dir, broker_host) as admin:
            counters = ClaimCounters()
            if metrics_port is not None:
                from prometheus_client import start_http_server

                start_http_server(metrics_port, "127.0.0.1", counters.registry)
            svc = ClaimService(
                ClaimResponder(store, master, admin, counters),
                cfg.mqtt.host,
                cfg.mqtt.port,
                cfg.mqtt.username,
                cfg.mqtt.password,
            ).start()
            click.echo(f"claim service on {cfg.mqtt.host}:{cfg.mqtt.port}; Ctrl-C stops it")
            stop.wait()
            svc.stop()
    except ControllerError as e:
        raise CliError(str(e)) from None
    finally:
        store.close()


# --------------------------------------------------------------------------- direct
@click.command("provision")
@click.option("--port", required=True, help="Serial port of the board (/dev/ttyUSB0).")
@click.option("--zone", required=True)
@click.option("--device", "device_id", default=None, help="Default: <zone>-<8 random hex>.")
@click.option("--kind", type=click.Choice(["ap", "sensor"]), default="ap", show_default=True)
@click.option("--site", default="porto", show_default=True)
@click.option("--board", "board_name", default="esp32", show_default=True)
@api_option
@token_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also keep the bundle here (0600).",
)
@click.option("--show-key", is_flag=True, help="Print the device key and broker password.")
@_broker_dir_option
@_broker_host_option
@click.option("--broker-port", type=int, default=None)
@click.option("--no-broker-account", is_flag=True, help="Broker without accounts (demo).")
@release_key_option
@wifi_options
def provision(
    port: str,
    zone: str,
    device_id: str | None,
    kind: str,
    site: str,
    board_name: str,
    api: str | None,
    token: str | None,
    out: Path | None,
    show_key: bool,
    broker_dir: Path,
    broker_host: str,
    broker_port: int | None,
    no_broker_account: bool,
    release_key: bytes | None,
    wifi_ssid: str | None,
    wifi_password_file: Path | None,
) -> None:
    """Register a board on USB with the controller, create its broker account, and write the
    agent and its bundle to it. Nothing is left half-made when a step fails."""
    from tools import flash as F

    device_id = device_id or f"{zone[:23].rstrip('-')}-{secrets.token_hex(4)}"
    try:
        check_id(zone, "zone")
        check_id(site, "site")
        check_id(device_id, "device id")
    except ProtocolError as e:
        raise click.BadParameter(e.detail) from None
    if out is not None and out.exists():
        raise CliError(f"{out} exists: remove it or choose another --out")
    try:
        F.check_port(port)
        F.build_plan(port, board_name, agent=False, bundle_data=_placeholder(device_id))
    except F.FlashError as e:
        raise CliError(str(e)) from None
    if wifi_ssid is None and board_name == "esp32":
        raise click.UsageError("an esp32 joins Wi-Fi: add --wifi-ssid (the password is asked)")
    wifi = read_wifi(wifi_ssid, wifi_password_file)  # asked before anything is created
    client = ApiClient(api, token)
    try:
        zones = client.get("/api/zones")["zones"]
    except CliError as e:  # a wrong token or an unreachable controller: nothing made yet
        raise CliError(f"{e}; nothing was registered") from None
    problem = zone_problem(zone, zones)
    if problem is not None:  # asked first: nothing is created for a zone the controller refuses
        raise CliError(f"{problem}; nothing was registered")
    bport = _broker_port(broker_dir, broker_port)
    password: str | None = None
    if not no_broker_account:
        password = dynsec.new_password()
        with _admin(broker_dir, broker_host) as admin:
            try:
                admin.create_device(site, device_id, password)
            except SecurityError as e:
                raise CliError(f"{e}; nothing was registered") from None
    try:
        reg = client.post(
            "/api/devices", {"id": device_id, "site": site, "zone": zone, "kind": kind}
        )
    except CliError as e:
        _undo_account(broker_dir, broker_host, site, device_id, password)
        raise CliError(f"{e}; nothing was registered") from None
    broker = broker_block(broker_host, bport, device_id, password)
    cfg = device_bundle(
        device_id,
        site,
        zone,
        kind,
        bytes.fromhex(reg["key"]),
        broker,
        release_key,
        board=F.board(board_name).name,
        **({} if wifi is None else {"wifi": wifi}),
    )
    if out is not None:
        _write_secret_json(out, cfg)
    try:
        plan = F.build_plan(port, board_name, bundle_data=json.dumps(cfg).encode())
        result = F.execute(plan)
    except F.FlashError as e:
        if out is None:  # the key exists nowhere else: take the registration back
            client.post(f"/api/devices/{device_id}/disable", {})
            _undo_account(broker_dir, broker_host, site, device_id, password)
            raise CliError(
                f"{e}; {device_id} was disabled again, nothing is on the board"
            ) from None
        raise CliError(
            f"{e}; {device_id} is registered and its bundle is in {out}: "
            f"retry with `idufleet flash --port {port} --bundle {out}`"
        ) from None
    click.echo(f"provisioned {device_id} ({site}/{zone}, {kind}): {result.written} files on {port}")
    if out is not None:
        click.echo(f"bundle (mode 0600): {out}")
    if show_key:
        click.echo(f"key: {reg['key']}")
        if password:
            click.echo(f"broker password: {password}")


def _placeholder(device_id: str) -> bytes:
    """A syntactically complete bundle to validate the plan before anything is registered."""
    return json.dumps(
        {"device": device_id, "site": "x", "zone": "x", "kind": "ap", "key": "0" * 64, "broker": {}}
    ).encode()


def _undo_account(
    broker_dir: Path, host: str, site: str, device_id: str, password: str | None
) -> None:
    if password is None:
        return
    try:
        with _admin(broker_dir, host) as admin:
            admin.run(dynsec.delete_device_commands(site, device_id), check=False)
    except CliError:
        pass


# --------------------------------------------------------------------------- rotate / revoke
@click.command("rotate-key")
@click.argument("device_id")
@api_option
@token_option
@click.option("--grace", type=float, default=60.0, show_default=True, help="Old key valid (s).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Wait for the ACK.")
def rotate_key(
    device_id: str, api: str | None, token: str | None, grace: float, timeout: float
) -> None:
    """Send DEVICE_ID a new key by signed command; switch once it ACKs (old key kept --grace s)."""
    client = ApiClient(api, token, timeout=timeout + 10)
    r = client.post(f"/api/devices/{device_id}/rotate-key", {"grace": grace, "timeout": timeout})
    click.echo(
        f"{device_id}: key rotated (command {r['epoch']}/{r['seq']}); "
        f"old key valid {grace:g} s more"
    )


@click.command("revoke")
@click.argument("device_id")
@api_option
@token_option
@_broker_dir_option
@_broker_host_option
@click.option("--no-broker-account", is_flag=True, help="Broker without accounts (demo).")
def revoke(
    device_id: str,
    api: str | None,
    token: str | None,
    broker_dir: Path,
    broker_host: str,
    no_broker_account: bool,
) -> None:
    """Disable DEVICE_ID's broker account (its connection is dropped now) and its registry entry
    (the controller refuses whatever still arrives)."""
    from controller.provisioning.revocation import revoke_broker

    if not no_broker_account:
        with _admin(broker_dir, broker_host) as admin:
            try:
                revoke_broker(admin, device_id)
            except ControllerError as e:
                raise CliError(str(e)) from None
    ApiClient(api, token).post(f"/api/devices/{device_id}/disable", {})
    click.echo(f"{device_id}: revoked (broker account disabled, registry entry disabled)")


def register(cli: click.Group) -> None:
    """Add these commands to the idufleet CLI (tools/cli.py)."""
    cli.add_command(claim_group)
    cli.add_command(provision)
    device = cli.commands.get("device")
    if isinstance(device, click.Group):
        device.add_command(rotate_key)
        device.add_command(revoke)
    else:
        group = click.Group("device", help="Device lifecycle: rotate-key, revoke.")
        group.add_command(rotate_key)
        group.add_command(revoke)
        cli.add_command(group)
