"""The controller's configuration: one schema with its defaults (the dataclasses below), read from
TOML and then overridden by environment variables IDUFLEET_<SECTION>_<KEY>. Validated once at
start; every error names the field and the fix. Secrets (passwords, tokens) are never logged."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.errors import ConfigError
from protocol import ProtocolError
from protocol.topics import check_id

ENV_PREFIX = "IDUFLEET_"
SECRET_FIELDS = {
    ("mqtt", "password"),
    ("api", "token"),
    ("keys", "master_key"),
    ("cli", "token"),
}
ENV_CONFIG = "IDUFLEET_CONFIG"
LOCAL_CONFIG = Path("idufleet.toml")  # in the current folder
SYSTEM_CONFIG = Path("/etc/idufleet/idufleet.toml")
NOT_FOUND = (
    "no idufleet config found: pass --config FILE, set IDUFLEET_CONFIG=FILE, or put "
    "idufleet.toml in this folder or /etc/idufleet/ (deploy/idufleet.toml is an example; "
    "`idufleet init --config FILE` then creates its store and master key)"
)


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    client_id: str = "idufleet-controller"
    keepalive: int = 30
    session_expiry: int = 86400  # seconds the broker keeps our session (and queues QoS 1) offline
    shared_group: str = ""  # non-empty: subscribe as $share/<group>/... to split load
    # Session expiry of a shared-group member, instead of session_expiry: Mosquitto 2.0 keeps
    # handing a dead member's session its share until the session expires (measured:
    # docs/CONTROLLER.md "Failover"), so 0 returns it to the survivors at once; what was in
    # flight to the dead member is re-sent by devices that confirm (PROTOCOL.md section 16).
    shared_session_expiry: int = 0
    tls: bool = False
    ca: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port {self.port} is not a TCP port; use 1..65535")
        if self.session_expiry < 0 or self.shared_session_expiry < 0:
            raise ConfigError("mqtt.session_expiry and shared_session_expiry must be >= 0 s")
        if "/" in self.shared_group or "+" in self.shared_group or "#" in self.shared_group:
            raise ConfigError("mqtt.shared_group must not contain / + or #")


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sqlite"
    path: str = "var/idufleet.sqlite"  # sqlite only
    dsn: str = ""  # postgres only, and required there: a libpq connection string
    schema: str = "idufleet"  # postgres only: everything lives in this schema
    raw_retention_days: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "postgres"):
            raise ConfigError(f"store.backend {self.backend!r}: use 'sqlite' or 'postgres'")
        if self.backend == "postgres" and not self.dsn.strip():
            raise ConfigError(
                "store.dsn must be set when store.backend is 'postgres': a libpq connection"
                " string such as 'host=db.example dbname=idufleet user=idufleet' (a password"
                " through IDUFLEET_STORE_DSN or ~/.pgpass, not the config file)"
            )
        if not self.schema.replace("_", "").isalnum() or not self.schema[:1].isalpha():
            raise ConfigError("store.schema must be letters, digits and _ starting with a letter")
        if self.raw_retention_days <= 0:
            raise ConfigError("store.raw_retention_days must be > 0")


@dataclass(frozen=True)
class KeysConfig:
    master_key_file: str = "var/master.key"  # 64 hex digits; created by `idufleet serve --init`
    master_key: str = ""  # 64 hex digits; set through IDUFLEET_KEYS_MASTER_KEY, wins over the file


@dataclass(frozen=True)
class IngestConfig:
    batch_size: int = 500  # messages per store commit, whichever comes first with batch_ms
    batch_ms: int = 100
    offline_after: int = 180  # seconds without any message before a device is marked offline
    reject_log_per_min: int = 30  # rejection log lines per minute (all are counted)
    ack_after_commit: bool = True  # PUBACK only once stored: a crash loses nothing
    # SIGTERM: seconds to commit and acknowledge what was received before disconnecting anyway;
    # what is not committed by then stays unacknowledged with the broker (redelivered later).
    shutdown_timeout: float = 10.0
    # seconds between looks at the fleet jobs' ACKs and timers (a BIRTH wakes them at once)
    jobs_tick: float = 0.1

    def __post_init__(self) -> None:
        if self.jobs_tick <= 0:
            raise ConfigError("ingest.jobs_tick must be > 0 seconds")
        if self.batch_size < 1 or self.batch_ms < 1:
            raise ConfigError("ingest.batch_size and ingest.batch_ms must be >= 1")
        if self.shutdown_timeout <= 0:
            raise ConfigError("ingest.shutdown_timeout must be > 0 seconds")
        if self.offline_after < 1:
            raise ConfigError("ingest.offline_after must be >= 1 second")


@dataclass(frozen=True)
class HealthConfig:
    """When /health answers 503 (the reasons are in its JSON): the store has failed for
    store_failing_s; messages have waited for a commit longer than commit_stale_s; the broker's
    dropped-message counter rose within the last broker_drop_hold_s."""

    store_failing_s: float = 30.0
    commit_stale_s: float = 60.0
    broker_drop_hold_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("store_failing_s", "commit_stale_s", "broker_drop_hold_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"health.{name} must be > 0 seconds")


@dataclass(frozen=True)
class ConfirmConfig:
    """Delivery confirmation (docs/PROTOCOL.md section 16, docs/CONTROLLER.md)."""

    enabled: bool = True  # send CONFIRMs to devices whose BIRTH opted in
    interval_ms: int = 2000  # at most one CONFIRM per device per interval
    reload_ms: int = 10000  # re-read which devices opted in (another controller saw the BIRTH)

    def __post_init__(self) -> None:
        if self.interval_ms < 1 or self.reload_ms < 1:
            raise ConfigError("confirm.interval_ms and confirm.reload_ms must be >= 1")


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # The bootstrap admin's bearer token: acts as the operator "api.token" with the admin role,
    # so a deployment works before any `idufleet operator add` (and creates the first ones).
    # Empty: only operator tokens are accepted.
    token: str = ""
    metrics_open: bool = False  # serve /metrics without a token (a Prometheus on this host)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"api.port {self.port}: use 0 (any free port) .. 65535")


@dataclass(frozen=True)
class CliConfig:
    """Where the CLI finds the controller's API when it runs elsewhere: `api` is its URL (empty:
    http://<api.host>:<api.port> of this config) and `token` an operator token (empty: the
    config's api.token). IDUFLEET_API / IDUFLEET_API_TOKEN and --api / --token override them."""

    api: str = ""
    token: str = ""


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    json: bool = False

    def __post_init__(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log.level: use debug, info, warning or error")


# Porto's districts and neighbourhoods the fleet is deployed in: the allowed zones unless the
# config's [fleet] zones says otherwise. Add to the config, not here, to open a new zone.
DEFAULT_ZONES = (
    "ribeira",
    "baixa",
    "boavista",
    "campanha",
    "foz",
    "aldoar",
    "aliados",
    "antas",
    "asprela",
    "bolhao",
    "bonfim",
    "cedofeita",
    "lordelo",
    "massarelos",
    "miragaia",
    "nevogilde",
    "paranhos",
    "ramalde",
    "se",
)


@dataclass(frozen=True)
class FleetConfig:
    """What devices may be registered as. `zones` is the closed set of zone names accepted when a
    device or claim token is created (a typo would otherwise open a zone of one); an empty list
    accepts any well-formed zone name. Devices already registered are never re-checked."""

    zones: tuple[str, ...] = DEFAULT_ZONES

    def __post_init__(self) -> None:
        object.__setattr__(self, "zones", tuple(self.zones))  # a list from code is fine too
        for z in self.zones:
            try:
                check_id(z, "zone")
            except ProtocolError as e:
                raise ConfigError(f"fleet.zones: {e.detail}") from None
        if len(set(self.zones)) != len(self.zones):
            raise ConfigError("fleet.zones lists a zone twice; keep each name once")


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    cli: CliConfig = field(default_factory=CliConfig)

    def redacted(self) -> dict[str, dict[str, Any]]:
        """The config as a dict with secrets replaced, for logs and `--check` output."""
        out: dict[str, dict[str, Any]] = {}
        for sec in dataclasses.fields(self):
            d = dataclasses.asdict(getattr(self, sec.name))
            for k in d:
                if (sec.name, k) in SECRET_FIELDS and d[k]:
                    d[k] = "***"
            out[sec.name] = d
        return out


_SECTION_TYPES = {
    "mqtt": MqttConfig,
    "store": StoreConfig,
    "keys": KeysConfig,
    "ingest": IngestConfig,
    "confirm": ConfirmConfig,
    "api": ApiConfig,
    "log": LogConfig,
    "fleet": FleetConfig,
    "health": HealthConfig,
    "cli": CliConfig,
}


def _convert(section: str, key: str, value: Any, want: str) -> Any:
    """Coerce one value to the field's declared type; env strings are parsed, TOML types checked."""
    where = f"{section}.{key}"
    if want == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if want == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if want == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if want == "tuple[str, ...]":  # TOML array of strings; env: comma-separated ("" = empty)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be a string, got {value!r}")


def build(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Config from parsed TOML plus environment overrides. Raises ConfigError naming the field."""
    env = os.environ if env is None else env
    sections: dict[str, Any] = {}
    for name in data:
        if name not in _SECTION_TYPES:
            raise ConfigError(f"unknown section [{name}]; known: {', '.join(_SECTION_TYPES)}")
    for name, cls in _SECTION_TYPES.items():
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[{name}] must be a table")
        fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in fields:
                raise ConfigError(f"unknown key {name}.{key}; known: {', '.join(sorted(fields))}")
            values[key] = _convert(name, key, value, fields[key])
        for key, want in fields.items():
            env_name = f"{ENV_PREFIX}{name.upper()}_{key.upper()}"
            if env_name in env:
                values[key] = _convert(name, key, env[env_name], want)
        sections[name] = cls(**values)
    return Config(**sections)


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read a TOML file (None: defaults only) and apply environment overrides."""
    if path is None:
        return build({}, env)
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} not found; pass --config with an existing file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return build(data, env)


def find(explicit: str | Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The one discovery rule every command uses: --config, then $IDUFLEET_CONFIG, then
    ./idufleet.toml, then /etc/idufleet/idufleet.toml; None when none applies."""
    env = os.environ if env is None else env
    if explicit is not None:
        return Path(explicit)
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    for p in (LOCAL_CONFIG, SYSTEM_CONFIG):
        if p.is_file():
            return p
    return None


def discover(
    explicit: str | Path | None, env: Mapping[str, str] | None = None, required: bool = True
) -> tuple[Config, Path | None]:
    """The config found by `find` (and its path). Raises ConfigError with the fix when none is
    found and `required` (a command that opens the store or the master key); otherwise the
    defaults and environment overrides alone."""
    path = find(explicit, env)
    if path is None and required:
        raise ConfigError(NOT_FOUND, "no_config")
    return load(path, env), path
