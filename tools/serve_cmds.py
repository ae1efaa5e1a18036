"""`idufleet serve` (the controller service) and `idufleet device ...` (the registry, written
straight to the store named in the config: used on the controller host and by the demo)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
from pathlib import Path

import click

from controller import registry
from controller.config import Config, discover
from controller.errors import ControllerError
from controller.keys import load_master
from controller.logs import setup
from controller.store import open_store
from tools.errors import CliError
from tools.options import BROKER_DIR, dir_option, read_wifi, wifi_options

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="IDUFLEET_CONFIG",
    help="TOML config (see deploy/idufleet.toml); IDUFLEET_<SECTION>_<KEY> overrides it.",
)


def _load(config_path: Path | None) -> Config:
    """The config by the one discovery rule (controller.config.find); refuses, with the fix,
    when there is none, so a forgotten --config never opens a second registry."""
    try:
        return discover(config_path)[0]
    except ControllerError as e:
        raise CliError(str(e)) from None


def _init(cfg: Config, create_dirs: bool) -> list[str]:
    """Create what is missing of the master key file and the SQLite store: folders 0700, files
    0600. Refuses a parent folder that does not exist unless create_dirs (a typo in store.path
    would otherwise make a fresh registry somewhere unexpected). Returns what was created."""
    made: list[str] = []
    wanted = [] if cfg.keys.master_key else [Path(cfg.keys.master_key_file)]
    if cfg.store.backend == "sqlite":
        wanted.append(Path(cfg.store.path))
    for path in wanted:
        if not path.parent.is_dir():
            if not create_dirs:
                raise CliError(
                    f"folder {path.parent} does not exist; fix the path in the config or pass "
                    "--create-dirs to create it (mode 0700)"
                )
            path.parent.mkdir(mode=0o700, parents=True)
            made.append(f"{path.parent}/ (0700)")
    key_file = Path(cfg.keys.master_key_file)
    if not cfg.keys.master_key and not key_file.exists():
        load_master(cfg.keys, create=True)
        made.append(f"{key_file} (0600)")
    db = Path(cfg.store.path)
    new_db = cfg.store.backend == "sqlite" and not db.exists()
    open_store(cfg.store).close()
    if new_db:
        db.chmod(0o600)
        made.append(f"{db} (0600)")
    return made


async def _serve(cfg: Config) -> None:
    from controller.app import Controller

    ctl = Controller(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctl.stop)
    await ctl.run()


_create_dirs_option = click.option(
    "--create-dirs", is_flag=True, help="Create missing parent folders of the store and key (0700)."
)


@click.command("init")
@_config_option
@_create_dirs_option
def init_cmd(config_path: Path | None, create_dirs: bool) -> None:
    """Create the config's master key and store if they do not exist (the only command that
    does): folders 0700, files 0600."""
    cfg = _load(config_path)
    try:
        made = _init(cfg, create_dirs)
    except ControllerError as e:
        raise CliError(str(e)) from None
    click.echo("created " + ", ".join(made) if made else "nothing to create: all present")


def check_problems(cfg: Config) -> list[str]:
    """What would stop `serve` from working although the config parses: each a line with the
    fix. Read-only (creates nothing)."""
    out: list[str] = []
    try:
        load_master(cfg.keys, create=False)
    except ControllerError as e:
        out.append(str(e))
    if cfg.mqtt.username and not cfg.mqtt.password:
        out.append(
            f"mqtt.password is empty for broker user {cfg.mqtt.username!r}: set "
            "IDUFLEET_MQTT_PASSWORD (in /etc/idufleet/env, mode 0600) to the password "
            "`idufleet broker init` wrote to secrets/broker/controller.password"
        )
    return out


def _port_taken(cfg: Config, e: OSError) -> CliError:
    where = f"{cfg.api.host}:{cfg.api.port}"
    if e.errno == errno.EACCES:
        return CliError(
            f"API port {where} needs privileges this user lacks: set api.port >= 1024 in the "
            "config (or IDUFLEET_API_PORT)"
        )
    return CliError(
        f"API port {where} is already taken (another `idufleet serve`?): stop what holds it "
        f"(`ss -ltnp 'sport = :{cfg.api.port}'` shows it) or set another api.port in the "
        "config (or IDUFLEET_API_PORT)"
    )


@click.command("serve")
@_config_option
@click.option("--init", is_flag=True, help="First run `idufleet init` (master key and store).")
@_create_dirs_option
@click.option(
    "--check",
    is_flag=True,
    help="Validate the config, the master key and the broker password; print the config "
    "(secrets hidden), exit.",
)
def serve(config_path: Path | None, init: bool, create_dirs: bool, check: bool) -> None:
    """Run the fleet controller until SIGTERM/SIGINT (then flush and disconnect cleanly)."""
    cfg = _load(config_path)
    if check:
        problems = check_problems(cfg)
        if problems:
            for line in problems:
                click.echo(f"Error: {line}", err=True)
            raise SystemExit(1)
        click.echo(json.dumps(cfg.redacted(), indent=2))
        return
    setup(cfg.log.level, cfg.log.json)
    try:
        if init:
            _init(cfg, create_dirs)
        load_master(cfg.keys, create=False)
        if cfg.store.backend == "sqlite":
            open_store(cfg.store, create=False).close()
        asyncio.run(_serve(cfg))
    except ControllerError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            if e.errno == errno.EADDRNOTAVAIL:
                raise CliError(
                    f"api.host {cfg.api.host!r} is not an address of this machine: fix api.host "
                    "in the config (127.0.0.1, or 0.0.0.0 for every interface)"
                ) from None
            raise _port_taken(cfg, e) from None
        raise


@click.group("device")
def device_group() -> None:
    """The device registry (local store): add, disable, enable, show a key."""


@device_group.command("add")
@_config_option
@click.argument("device_id")
@click.option("--site", default="porto", show_default=True)
@click.option("--zone", required=True, help="One of the config's [fleet] zones (ribeira, foz...).")
@click.option("--kind", type=click.Choice(registry.KINDS), required=True)
@click.option("--tag", "tags", multiple=True, help="key=value, repeatable.")
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the device's config.json here (owner-only) instead of printing the key.",
)
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", type=int, default=1883, show_default=True)
@wifi_options
def device_add(
    config_path: Path | None,
    device_id: str,
    site: str,
    zone: str,
    kind: str,
    tags: tuple[str, ...],
    bundle: Path | None,
    broker_host: str,
    broker_port: int,
    wifi_ssid: str | None,
    wifi_password_file: Path | None,
) -> None:
    """Register DEVICE_ID; its generated key is shown once (or written into --bundle, with the
    Wi-Fi credentials an esp32 joins with)."""
    if wifi_ssid is not None and bundle is None:
        raise click.UsageError("--wifi-ssid goes into a bundle: add --bundle PATH")
    wifi = read_wifi(wifi_ssid, wifi_password_file)  # asked before anything is created
    cfg = _load(config_path)
    tag_map: dict[str, str] = {}
    for t in tags:
        k, sep, v = t.partition("=")
        if not sep:
            raise click.BadParameter(f"tag {t!r} is not key=value", param_hint="--tag")
        tag_map[k] = v
    try:
        registry.check_zone(zone, cfg.fleet.zones)  # before the master key or store is touched
        master = load_master(cfg.keys, create=False)
        store = open_store(cfg.store, create=False)
        try:
            new = registry.create_device(
                store, master, device_id, site, zone, kind, tag_map, zones=cfg.fleet.zones
            )
        finally:
            store.close()
    except ControllerError as e:
        raise CliError(str(e)) from None
    if bundle is not None:
        bundle.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(bundle, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # owner-only even when the file existed with wider permissions
        with os.fdopen(fd, "w") as f:
            doc = (
                new.bundle(broker_host, broker_port)
                if wifi is None
                else new.bundle(broker_host, broker_port, wifi=wifi)
            )
            f.write(json.dumps(doc, indent=2) + "\n")
        click.echo(f"registered {device_id}; config bundle written to {bundle}")
    else:
        click.echo(f"registered {device_id}; key (shown once): {new.key.hex()}")


def _set_status(config_path: Path | None, device_id: str, enable: bool) -> None:
    cfg = _load(config_path)
    try:
        store = open_store(cfg.store, create=False)
        try:
            (registry.enable_device if enable else registry.disable_device)(store, device_id)
        finally:
            store.close()
    except ControllerError as e:
        raise CliError(str(e)) from None
    click.echo(f"{device_id} {'enabled' if enable else 'disabled'}")


@device_group.command("disable")
@_config_option
@click.argument("device_id")
def device_disable(config_path: Path | None, device_id: str) -> None:
    """Refuse every further message from DEVICE_ID (the controller picks it up within 10 s)."""
    _set_status(config_path, device_id, False)


@device_group.command("enable")
@_config_option
@click.argument("device_id")
@dir_option(
    "--broker-dir",
    None,
    BROKER_DIR,
    "Broker directory from `idufleet broker init` (admin credentials), to re-enable the "
    "device's broker account as `device revoke` disabled it.",
)
@click.option("--broker-host", default="127.0.0.1", show_default=True, help="Broker host.")
@click.option("--no-broker-account", is_flag=True, help="Broker without accounts (demo).")
def device_enable(
    config_path: Path | None,
    device_id: str,
    broker_dir: Path,
    broker_host: str,
    no_broker_account: bool,
) -> None:
    """Accept DEVICE_ID's messages again: the registry entry and (undoing `device revoke`) its
    broker account."""
    _set_status(config_path, device_id, True)
    if no_broker_account:
        return
    from controller.provisioning.revocation import enable_broker
    from controller.security.broker_config import CREDENTIALS
    from tools.provision_cmds import _admin

    fix = (
        f"its broker account may still be disabled: run `idufleet broker device enable "
        f"{device_id} --broker-dir DIR` with the broker's directory"
    )
    if not (broker_dir / CREDENTIALS).is_file():
        click.echo(f"{device_id}: registry only; no {broker_dir / CREDENTIALS}, so {fix}")
        return
    try:
        with _admin(broker_dir, broker_host) as admin:
            enable_broker(admin, device_id)
    except (CliError, ControllerError) as e:
        raise CliError(
            f"{device_id} enabled in the registry, not at the broker ({e}); {fix}"
        ) from None
    click.echo(f"{device_id}: broker account enabled")
