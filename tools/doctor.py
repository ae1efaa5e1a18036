"""`idufleet doctor`: checks a deployment from outside, with the config the controller runs on.
One line per check, `ok|FAIL check: detail — fix`; exit 1 if any fails; --json for machines.
Read-only: it opens the store without migrating or creating it and publishes only an empty
message to a probe command topic no device listens on."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from controller.config import Config
from controller.errors import ControllerError
from protocol import topics

# The clock must not be before this (the date this check was last touched at a release): a board
# or VM booted without NTP often says 1970 or 2000, and then every timestamp and TLS check lies.
BUILD_DATE = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
PROBE_SITE, PROBE_DEVICE = "doctor", "doctor-probe"  # the cmd topic the ACL check publishes to
TIMEOUT = 5.0


@dataclass
class Check:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        head = f"{'ok' if self.ok else 'FAIL'} {self.check}: {self.detail}"
        return head + (f" — {self.fix}" if self.fix and not self.ok else "")


# --- broker -----------------------------------------------------------------------------------
class _Probe:
    """One blocking MQTT v5 client with the controller's credentials (its own client id, so the
    running controller's session is left alone)."""

    def __init__(self, cfg: Config) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        m = cfg.mqtt
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{m.client_id}-doctor-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        if m.username:
            self.c.username_pw_set(m.username, m.password or None)
        if m.tls:
            self.c.tls_set(ca_certs=m.ca or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.connack: Any = None
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda *a: None

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        with self.cond:
            self.connack = rc
            self.cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[Any], props: Any) -> None:
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        with self.cond:
            self.pubacks[mid] = rc
            self.cond.notify_all()

    def _wait(self, pred: Any) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(pred, TIMEOUT))

    def connect(self, host: str, port: int) -> Any:
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None)
        return self.connack

    def subscribe(self, filters: list[tuple[str, int]]) -> list[Any] | None:
        _, sent = self.c.subscribe(filters)
        mid = int(sent or 0)
        return self.subacks.get(mid) if self._wait(lambda: mid in self.subacks) else None

    def publish(self, topic: str) -> Any:
        info = self.c.publish(topic, b"", qos=1)
        return self.pubacks.get(info.mid) if self._wait(lambda: info.mid in self.pubacks) else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _refused(rc: Any) -> bool:
    return rc is None or bool(getattr(rc, "is_failure", rc != 0))


def check_broker(cfg: Config) -> list[Check]:
    """Reachability, the controller's login, its ACLs (uplink, its $SYS topics, cmd)."""
    from controller.security.broker_stats import SYS_STATS

    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    try:
        socket.create_connection((m.host, m.port), timeout=TIMEOUT).close()
    except OSError as e:
        return [
            Check(
                "broker",
                False,
                f"cannot reach {where} ({e.strerror or e})",
                "start Mosquitto (`systemctl start mosquitto`) or fix mqtt.host / mqtt.port",
            )
        ]
    out = [Check("broker", True, f"{where} reachable")]
    user = m.username or "(anonymous)"
    probe = _Probe(cfg)
    try:
        try:
            rc = probe.connect(m.host, m.port)
        except (OSError, ssl.SSLError) as e:
            return [*out, Check("broker login", False, f"{where}: {e}", "check mqtt.tls / mqtt.ca")]
        if _refused(rc):
            out.append(
                Check(
                    "broker login",
                    False,
                    f"broker refused user {user!r}: {rc if rc is not None else 'no CONNACK'}",
                    "set IDUFLEET_MQTT_PASSWORD to the controller password in the broker's "
                    "credentials.json (`idufleet broker init` wrote it) and check mqtt.username",
                )
            )
            return out
        out.append(Check("broker login", True, f"user {user!r} accepted"))
        denied: list[str] = []
        uplink = topics.uplink_filter(topics.REPORT)
        got = probe.subscribe([(uplink, 1)])
        if got is None or _refused(got[0]):
            denied.append(f"subscribe {uplink}")
        sys_topics = sorted(SYS_STATS)
        got = probe.subscribe([(t, 0) for t in sys_topics])
        if got is None or any(_refused(r) for r in got):
            denied.append("read its $SYS topics")
        cmd = topics.topic(PROBE_SITE, PROBE_DEVICE, topics.COMMAND)
        if _refused(probe.publish(cmd)):
            denied.append(f"publish {cmd}")
        out.append(
            Check(
                "broker acl",
                not denied,
                "may not " + ", ".join(denied)
                if denied
                else "controller may subscribe to uplink, read its $SYS topics, publish cmd",
                f"give {user!r} the controller role again (dynsec controller_acls: "
                "`idufleet broker init` on a fresh broker, or mosquitto_ctrl addClientRole "
                f"{user} idu-controller)",
            )
        )
    finally:
        probe.close()
    return out


# --- master key, store --------------------------------------------------------------------------
def check_store_and_keys(cfg: Config) -> list[Check]:
    from controller.keys import load_master
    from controller.store import open_store
    from controller.store.schema import LATEST

    where = cfg.store.path if cfg.store.backend == "sqlite" else f"postgres {cfg.store.schema}"
    out: list[Check] = []
    try:
        store = open_store(cfg.store, migrate=False, create=False)
    except (ControllerError, OSError) as e:
        return [Check("store", False, f"{where} does not open: {e}", "fix store.* in the config")]
    try:
        version = store.schema_version()
        if version != LATEST:
            out.append(
                Check(
                    "store",
                    False,
                    f"{where} schema version {version}, this idufleet wants {LATEST}",
                    "run `idufleet init` (it migrates) or start `idufleet serve` once",
                )
            )
        else:
            try:
                store.probe_write()
                out.append(Check("store", True, f"{where} opens, schema {version}, writable"))
            except (ControllerError, OSError) as e:
                out.append(
                    Check(
                        "store",
                        False,
                        f"{where} is not writable: {e}",
                        "give the service user write access to the database (and its folder)",
                    )
                )
        try:
            master = load_master(cfg.keys, create=False)
        except ControllerError as e:
            out.append(Check("master key", False, str(e), "see the detail"))
            return out
        bad: list[str] = []
        recs = store.list_devices()
        for rec in recs:
            try:
                master.unwrap(rec.id, rec.key_wrapped)
            except ControllerError:
                bad.append(rec.id)
        key_file = Path(cfg.keys.master_key_file)
        loose = (
            not cfg.keys.master_key
            and key_file.exists()
            and stat.S_IMODE(key_file.stat().st_mode) & 0o077
        )
        if bad:
            shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
            out.append(
                Check(
                    "master key",
                    False,
                    f"{len(bad)} of {len(recs)} device keys do not open ({shown})",
                    "this is not the master key they were registered with: restore the right "
                    "keys.master_key_file / IDUFLEET_KEYS_MASTER_KEY, or re-provision those",
                )
            )
        elif loose:
            mode = oct(stat.S_IMODE(key_file.stat().st_mode))
            out.append(
                Check("master key", False, f"{key_file} is mode {mode}", f"chmod 600 {key_file}")
            )
        else:
            out.append(Check("master key", True, f"all {len(recs)} device keys open"))
    finally:
        store.close()
    return out


# --- API -----------------------------------------------------------------------------------------
def _api_of(cfg: Config, api: str | None, token: str | None) -> tuple[str, str]:
    """The API URL and token as every command finds them, from this config."""
    host = cfg.api.host if cfg.api.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    base = api or os.environ.get("IDUFLEET_API") or cfg.cli.api or f"http://{host}:{cfg.api.port}"
    tok = token if token is not None else os.environ.get("IDUFLEET_API_TOKEN")
    return base.rstrip("/"), tok if tok is not None else (cfg.cli.token or cfg.api.token)


def check_api(cfg: Config, api: str | None, token: str | None) -> list[Check]:
    base, tok = _api_of(cfg, api, token)
    try:
        with urllib.request.urlopen(base + "/health", timeout=TIMEOUT) as r:
            health = json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503: reachable but failing
        health = json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError) as e:
        return [
            Check(
                "api",
                False,
                f"cannot reach {base} ({getattr(e, 'reason', e)})",
                "start `idufleet serve`, or pass --api / put [cli] api in the config",
            )
        ]
    reasons = health.get("reasons") or []
    out = [
        Check(
            "api",
            not reasons,
            f"{base} answers, /health " + (", ".join(reasons) if reasons else "ok"),
            "see docs/CONTROLLER.md (Health) for each reason",
        )
    ]
    req = urllib.request.Request(base + "/api/whoami")
    if tok:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            who = json.loads(r.read())
        out.append(Check("api token", True, f"accepted: {who['name']} ({who['role']})"))
    except urllib.error.HTTPError as e:
        out.append(
            Check(
                "api token",
                False,
                "no token" if not tok else f"refused ({e.code})",
                "pass --token, set IDUFLEET_API_TOKEN or [cli] token (an `idufleet operator "
                "add` token, or api.token)",
            )
        )
    except (urllib.error.URLError, OSError) as e:
        out.append(Check("api token", False, f"{e}", "retry; is the controller overloaded?"))
    return out


# --- clock, TLS files ---------------------------------------------------------------------------
def check_clock(now: float | None = None) -> Check:
    t = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    if t < BUILD_DATE:
        return Check(
            "clock",
            False,
            f"{t:%Y-%m-%d %H:%M}Z is before this build ({BUILD_DATE:%Y-%m-%d})",
            "sync the clock (`timedatectl set-ntp true`, or chrony)",
        )
    return Check(
        "clock",
        True,
        f"{t:%Y-%m-%d %H:%M}Z, not before this build (broker not compared: Mosquitto's $SYS "
        "gives uptime, not wall time)",
    )


def check_tls(cfg: Config, ca_dir: Path) -> Check:
    from cryptography import x509

    notes: list[str] = []
    now = dt.datetime.now(dt.UTC)
    if cfg.mqtt.tls:
        ca = Path(cfg.mqtt.ca)
        try:
            certs = x509.load_pem_x509_certificates(ca.read_bytes())
        except (OSError, ValueError) as e:
            return Check("tls", False, f"mqtt.ca {ca} unreadable: {e}", "fix mqtt.ca")
        for c in certs:
            if c.not_valid_after_utc <= now:
                return Check(
                    "tls",
                    False,
                    f"mqtt.ca {ca} expired {c.not_valid_after_utc:%Y-%m-%d}",
                    "renew the CA (`idufleet ca init` in a new folder) and reissue",
                )
        notes.append(f"mqtt.ca valid until {min(c.not_valid_after_utc for c in certs):%Y-%m-%d}")
    else:
        notes.append("mqtt.tls off")
    keys = sorted(ca_dir.glob("*.key")) if ca_dir.is_dir() else []
    loose = [k for k in keys if stat.S_IMODE(k.stat().st_mode) & 0o077]
    if loose:
        return Check(
            "tls",
            False,
            f"{loose[0]} is mode {oct(stat.S_IMODE(loose[0].stat().st_mode))}",
            "chmod 600 " + " ".join(str(k) for k in loose),
        )
    notes.append(f"{len(keys)} key file(s) in {ca_dir} mode 0600" if keys else f"no {ca_dir}")
    return Check("tls", True, "; ".join(notes))


def run(cfg: Config, api: str | None, token: str | None, ca_dir: Path) -> list[Check]:
    out = check_broker(cfg)
    out += check_store_and_keys(cfg)
    out += check_api(cfg, api, token)
    out.append(check_clock())
    out.append(check_tls(cfg, ca_dir))
    return out


def doctor_command() -> click.Command:
    from tools.options import CA_DIR, api_option, token_option
    from tools.serve_cmds import _config_option, _load

    @click.command("doctor")
    @_config_option
    @api_option
    @token_option
    @click.option(
        "--ca-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=CA_DIR,
        show_default=True,
        help="CA folder whose key files must be owner-only.",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON list of the checks.")
    def doctor(
        config_path: Path | None, api: str | None, token: str | None, ca_dir: Path, as_json: bool
    ) -> None:
        """Check the broker (reachable, login, ACLs), the master key against the registry, the
        store, the API and token, the clock and TLS files; one line each with the fix."""
        cfg = _load(config_path)
        checks = run(cfg, api, token, ca_dir)
        if as_json:
            click.echo(json.dumps([asdict(c) for c in checks], indent=2))
        else:
            for c in checks:
                click.echo(c.line())
        if not all(c.ok for c in checks):
            raise SystemExit(1)

    return doctor
