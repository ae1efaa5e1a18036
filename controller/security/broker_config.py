"""Generated Mosquitto configuration: listeners (plain and TLS), the dynamic security plugin, and
the static fallback (password_file + acl_file with `pattern` lines, reloaded by SIGHUP).

Rendering is pure (settings in, config text out); the few I/O helpers locate the plugin and run
`mosquitto_passwd`. Every config sets TCP_NODELAY, per-client queues sized from the fleet and
the outage to survive (QueueSizing, with the formula), a short autosave_interval and the $SYS
interval the controller watches (/work/shared/PLATFORM-NOTES.md: 88 ms round trips, dropped
QoS 1 bursts and 30 minutes of queued messages lost in a crash otherwise).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from controller.errors import BAD_NAME, PLUGIN_MISSING, SecurityError

PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/mosquitto",
)
TLS_VERSION = "tlsv1.2"  # the minimum; Mosquitto also accepts 1.3 when this is set


def find_dynsec_plugin(dirs: tuple[str, ...] = PLUGIN_DIRS) -> Path:
    """Path of the installed dynamic security plugin, or SecurityError(PLUGIN_MISSING)."""
    for d in dirs:
        p = Path(d) / PLUGIN_NAME
        if p.exists():
            return p
    raise SecurityError(
        PLUGIN_MISSING,
        f"{PLUGIN_NAME} not found in {', '.join(dirs)}: install Mosquitto >= 2.0 "
        "(Debian: apt-get install mosquitto) or use the static fallback (password_file + acl_file)",
    )


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener; the server certificate must name the host clients connect to."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    bind: str | None = None
    require_certificate: bool = False  # True: clients must present a cert signed by cafile

    def lines(self) -> list[str]:
        out = [
            f"listener {self.port}" + (f" {self.bind}" if self.bind else ""),
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"tls_version {TLS_VERSION}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]
        return out


# Bytes Mosquitto holds per queued QoS 1 message for one subscriber: the payload (a 13-metric
# report is ~100 B signed, a BATCH up to a few KiB) plus its topic and the broker's own message
# and queue records. An estimate on the high side; max_queued_messages binds first.
MESSAGE_BYTES = 1024
MIN_QUEUE = 100_000  # PLATFORM-NOTES: 100000 gave zero loss in the burst trials; never less
BASE_MEMORY = 64 * 1024 * 1024  # connections, sessions, retained messages, the dynsec database


@dataclass(frozen=True)
class QueueSizing:
    """The broker's queue limits from the fleet and the controller outage it must survive.

    A controller that is down (or whose store stalls) leaves its QoS 1 messages queued in its
    persistent session. Past max_queued_messages Mosquitto drops them while still PUBACKing the
    devices (PLATFORM-NOTES), so the queue must hold an outage's worth:

        max_queued_messages = max(MIN_QUEUE, ceil(headroom * devices * outage_s / interval_s))
        max_queued_bytes    = max_queued_messages * message_bytes          (per client)
        memory_limit        = subscribers * max_queued_bytes + BASE_MEMORY  (whole broker)
        max_inflight_messages = inflight                                    (per client)

    `interval_s` is the devices' report interval (one message per device per interval; a BATCH
    of buffered samples is one message too); `headroom` covers bursts (devices back online
    sending their rings) and births; `subscribers` counts the controllers' persistent sessions
    (each $share member's session holds its share while it is gone, a plain subscriber all).
    memory_limit is what the host must give the broker. It is computed but NOT written as
    Mosquitto's `memory_limit`: measured on 2.0.11 with the dynamic-security plugin, creating
    30 device accounts in one control message already hit "out of memory" under a 190 MB
    limit (the plugin's allocations are counted and not given back), after which the broker
    disconnected every client; max_queued_bytes bounds each session's queue instead.
    `inflight` caps unacknowledged QoS 1 messages per client (MQTT v5 clients also announce
    their own Receive Maximum: the controller asks 65535)."""

    devices: int = 1000
    interval_s: float = 60.0
    outage_s: float = 3600.0
    headroom: float = 2.0
    subscribers: int = 1
    message_bytes: int = MESSAGE_BYTES
    inflight: int = 1000

    def __post_init__(self) -> None:
        if self.devices < 1 or self.interval_s <= 0 or self.outage_s <= 0 or self.headroom < 1:
            raise SecurityError(
                BAD_NAME,
                "queue sizing: devices >= 1, interval and outage > 0 seconds, headroom >= 1",
            )
        if self.subscribers < 1 or self.message_bytes < 1 or self.inflight < 1:
            raise SecurityError(BAD_NAME, "queue sizing: subscribers, bytes, inflight >= 1")

    @property
    def max_queued_messages(self) -> int:
        need = math.ceil(self.headroom * self.devices * self.outage_s / self.interval_s)
        return max(MIN_QUEUE, need)

    @property
    def max_queued_bytes(self) -> int:
        return self.max_queued_messages * self.message_bytes

    @property
    def memory_limit(self) -> int:
        return self.subscribers * self.max_queued_bytes + BASE_MEMORY

    def lines(self) -> list[str]:
        return [
            f"# queues sized for {self.devices} devices reporting every {self.interval_s:g} s"
            f" through a {self.outage_s:g} s controller outage (x{self.headroom:g} headroom,"
            f" {self.subscribers} subscriber session(s)); docs/CONTROLLER.md has the formula",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_inflight_messages {self.inflight}",
            # Not set (see memory_limit): size the host for it.
            f"# expected broker memory at full queues: {self.memory_limit} bytes",
        ]


@dataclass(frozen=True)
class BrokerSettings:
    """Everything the generated mosquitto.conf depends on, defaults in one place.

    Exactly one authentication mechanism: `dynsec_file` (with `plugin`, found when None), or
    `password_file` + `acl_file` for the static fallback. Anonymous access is always off."""

    data_dir: Path
    port: int | None = 1883  # plain MQTT listener; None: TLS only
    bind: str | None = None
    tls: TlsListener | None = None
    dynsec_file: Path | None = None
    plugin: Path | None = None
    password_file: Path | None = None
    acl_file: Path | None = None
    queues: QueueSizing = field(default_factory=QueueSizing)
    # Seconds between writes of the in-memory state (queued messages) to disk: a broker crash
    # loses what was queued since (Mosquitto's default is 1800). Writing costs time in
    # proportion to what is queued; only the store's confirmation (issue 10, item 1) closes
    # the gap, since Mosquitto acknowledges a device before the message is on disk.
    autosave_interval: int = 5
    sys_interval: int = 10  # seconds between $SYS statistics (the controller watches drops)
    log_dest: str = "stderr"
    # Mosquitto started as root drops to this user (its default: "mosquitto"), which must be able
    # to read and write dynsec_file and data_dir. None leaves Mosquitto's default.
    user: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        static = self.password_file is not None or self.acl_file is not None
        if self.dynsec_file is not None and static:
            raise SecurityError(BAD_NAME, "choose dynsec_file or password_file/acl_file, not both")
        if self.dynsec_file is None and (self.password_file is None or self.acl_file is None):
            raise SecurityError(
                BAD_NAME, "give dynsec_file, or both password_file and acl_file (fallback)"
            )
        if self.port is None and self.tls is None:
            raise SecurityError(BAD_NAME, "no listener: give port and/or tls")


def dynsec_lines(plugin: Path, config_file: Path) -> list[str]:
    return [f"plugin {plugin}", f"plugin_opt_config_file {config_file}"]


def render(s: BrokerSettings) -> str:
    """The full mosquitto.conf text. Global options first, then the listeners."""
    lines = [
        "# generated by idufleet (controller/security/broker_config.py): regenerate, do not edit",
        "per_listener_settings false",
        "allow_anonymous false",
        *([f"user {s.user}"] if s.user else []),
        "set_tcp_nodelay true",
        *s.queues.lines(),
        "persistence true",
        f"persistence_location {s.data_dir}/",
        f"autosave_interval {s.autosave_interval}",
        f"sys_interval {s.sys_interval}",
        f"log_dest {s.log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if s.dynsec_file is not None:
        lines += dynsec_lines(s.plugin or find_dynsec_plugin(), s.dynsec_file)
    else:
        lines += [f"password_file {s.password_file}", f"acl_file {s.acl_file}"]
    if s.port is not None:
        lines.append(f"listener {s.port}" + (f" {s.bind}" if s.bind else ""))
    if s.tls is not None:
        lines += s.tls.lines()
    lines += list(s.extra)
    return "\n".join(lines) + "\n"


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """Write a Mosquitto password file (0600) through `mosquitto_passwd -U`, which hashes in place;
    passwords go through the file, never the command line. Send SIGHUP to the broker to reload."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        raise SecurityError(PLUGIN_MISSING, "mosquitto_passwd not found: install mosquitto")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for user, pw in users.items():
            if ":" in user or "\n" in user + pw:
                raise SecurityError(BAD_NAME, f"username {user!r} must not contain ':' or newline")
            f.write(f"{user}:{pw}\n")
    try:
        subprocess.run([tool, "-U", str(tmp)], check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError as e:
        tmp.unlink(missing_ok=True)
        raise SecurityError(
            PLUGIN_MISSING, f"mosquitto_passwd failed: {e.stderr.decode(errors='replace')}"
        ) from e
    os.replace(tmp, path)
    return path


# A broker directory in one call ---------------------------------------------------------------

CREDENTIALS = "credentials.json"


@dataclass(frozen=True)
class BrokerDir:
    conf: Path
    dynsec_file: Path
    credentials: Path


def write_broker_dir(
    directory: Path,
    port: int | None = 1883,
    bind: str | None = None,
    tls: TlsListener | None = None,
    user: str | None = None,
    admin: str = "admin",
    controller: str = "controller",
    queues: QueueSizing | None = None,
) -> BrokerDir:
    """mosquitto.conf + dynamic-security file (admin and controller accounts with random
    passwords) + credentials.json (0600, the two passwords and the listener ports, for the
    controller and the CLI). Refuses to overwrite: the dynsec file is the broker's live account
    database once it has run."""
    from controller.security import dynsec  # local: dynsec imports paho, rendering does not

    files = BrokerDir(
        directory / "mosquitto.conf", directory / "dynsec.json", directory / CREDENTIALS
    )
    existing = [p for p in (files.conf, files.dynsec_file, files.credentials) if p.exists()]
    if existing:
        raise SecurityError(
            BAD_NAME, f"{existing[0]} exists: this directory already holds a broker; use another"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    admin_pw, ctl_pw = dynsec.new_password(), dynsec.new_password()
    dynsec.write_initial_file(files.dynsec_file, admin, admin_pw, (controller, ctl_pw))
    settings = BrokerSettings(
        data_dir=directory,
        port=port,
        bind=bind,
        tls=tls,
        dynsec_file=files.dynsec_file,
        user=user,
        queues=queues or QueueSizing(),
    )
    files.conf.write_text(render(settings))
    creds = {
        "admin": {"username": admin, "password": admin_pw},
        "controller": {"username": controller, "password": ctl_pw},
        "port": port,
        "tls_port": tls.port if tls else None,
        "cafile": str(tls.cafile) if tls else None,
    }
    fd = os.open(files.credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=1)
    return files
