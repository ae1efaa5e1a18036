"""The controller over TLS against a real Mosquitto: with mqtt.tls and mqtt.ca set to the project
CA it connects, and a signed report published over TLS is verified and stored; trusting another
CA, or reaching the broker under a name its certificate does not carry, it never connects, stores
nothing and says why in one log line (no traceback); a CA file that cannot be read is a config
error before anything starts."""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller import registry
from controller.config import Config, MqttConfig
from controller.errors import ConfigError
from controller.keys import MasterKey
from controller.security import ca
from controller.store import open_store
from controller.transport.mqtt import MqttLink
from protocol import messages as M
from tests.controller.devsim import SimDevice
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.support.broker import Broker, free_port
from tests.support.secure_broker import Peer
from tools.cli import cli

pytestmark = pytest.mark.timeout(60)

MASTER = MasterKey(bytes(range(32)))


class Records(logging.Handler):
    """Records of one logger, attached directly (the app's log setup stops propagation)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def mqtt_log() -> Iterator[Records]:
    h = Records()
    lg = logging.getLogger("idufleet.mqtt")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    yield h
    lg.removeHandler(h)
    lg.setLevel(old)


@pytest.fixture
def cadir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    ca.init_ca(d)
    ca.issue_server(d, ["localhost", "127.0.0.1"])
    ca.issue_server(d, ["mqtt.example.org"], name="elsewhere")  # names neither host we dial
    return d


def tls_broker(factory: Callable[..., Broker], cadir: Path, cert: str = "server") -> int:
    """A broker with a TLS listener (server cert `cert`) beside its plain one; its TLS port."""
    port = free_port()
    extra = [
        f"listener {port} 127.0.0.1",
        f"cafile {cadir / 'ca.crt'}",
        f"certfile {cadir / f'{cert}.crt'}",
        f"keyfile {cadir / f'{cert}.key'}",
        "tls_version tlsv1.2",
    ]
    if os.geteuid() == 0:  # keep root, or Mosquitto drops to "mosquitto" and cannot read the key
        extra.insert(0, "user root")
    factory(extra=extra)
    return port


def tls_config(tmp_path: Path, port: int, cafile: Path, host: str = "localhost") -> Config:
    cfg = make_config(sqlite_config(tmp_path), port, client_id="ctl-tls")
    mqtt = MqttConfig(host=host, port=port, client_id="ctl-tls", keepalive=5, tls=True)
    return replace(cfg, mqtt=replace(mqtt, ca=str(cafile)))


def register(tmp_path: Path) -> bytes:
    s = open_store(sqlite_config(tmp_path))
    try:
        return registry.create_device(s, MASTER, "ap-tls", "porto", "ribeira", "ap").key
    finally:
        s.close()


def device_peer(port: int, cafile: Path, check_name: bool = True) -> Peer:
    """The device side over TLS too: a paho client verifying the same CA."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = check_name
    p = Peer(port, tls=ctx, client_id="ap-tls")
    assert p.connect() == 0
    return p


def publish_reports(p: Peer, sim: SimDevice, n: int) -> None:
    birth = {M.B_FIRMWARE: "tls-1.0", M.B_BOARD: "sim", M.B_BOOT_REASON: 0, M.B_KIND: "ap"}
    p.publish(*sim.build(M.BIRTH, birth))
    for i in range(n):
        p.publish(*sim.build(M.REPORT, {16: 100 + i}))


def stored_rows(tmp_path: Path) -> int:
    s = open_store(sqlite_config(tmp_path))
    try:
        return len(s.raw_series("ap-tls", 16, 0, time.time() + 60, 1000))
    finally:
        s.close()


def test_controller_over_tls_stores_signed_reports(
    broker_factory: Callable[..., Broker], tmp_path: Path, cadir: Path, mqtt_log: Records
) -> None:
    port = tls_broker(broker_factory, cadir)
    key = register(tmp_path)
    ct = ControllerThread(tls_config(tmp_path, port, cadir / "ca.crt"), MASTER).start()
    try:
        assert ct.ctl is not None
        sock = ct.ctl.link.client.socket()
        assert isinstance(sock, ssl.SSLSocket), "the controller's link is not TLS"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert sock.getpeercert()["subjectAltName"] == (  # type: ignore[index]
            ("DNS", "localhost"),
            ("IP Address", "127.0.0.1"),
        )
        p = device_peer(port, cadir / "ca.crt")
        try:
            publish_reports(p, SimDevice("ap-tls", key, port), 5)
            ct.wait(lambda c: c.metrics.stored._value.get() >= 6, what="BIRTH + 5 reports stored")
        finally:
            p.close()
        assert ct.ctl.metrics.received._value.get() == 6  # verified: nothing was rejected
    finally:
        ct.stop()
    assert stored_rows(tmp_path) == 5
    assert not [r for r in mqtt_log.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("case", "cert", "host"),
    [
        ("other-ca", "server", "localhost"),  # the controller trusts a CA that did not sign it
        ("wrong-name", "elsewhere", "127.0.0.1"),  # signed by our CA, but for another host
    ],
)
def test_controller_refuses_an_untrusted_broker(
    broker_factory: Callable[..., Broker],
    tmp_path: Path,
    cadir: Path,
    mqtt_log: Records,
    case: str,
    cert: str,
    host: str,
) -> None:
    port = tls_broker(broker_factory, cadir, cert)
    key = register(tmp_path)
    trusted = cadir / "ca.crt"
    if case == "other-ca":
        ca.init_ca(tmp_path / "other")
        trusted = tmp_path / "other" / "ca.crt"
    ct = ControllerThread(tls_config(tmp_path, port, trusted, host), MASTER)
    ct._thread.start()
    try:
        ct.wait(
            lambda c: any("not trusted" in r.getMessage() for r in mqtt_log.records),
            what="a log line about the broker's certificate",
        )

        # a genuine device publishes over TLS; nothing may reach the store through this controller
        def refusals() -> int:
            return sum("not trusted" in r.getMessage() for r in mqtt_log.records)

        p = device_peer(port, cadir / "ca.crt", check_name=False)  # not what is tested here
        try:
            publish_reports(p, SimDevice("ap-tls", key, port), 3)
        finally:
            p.close()
        # the controller keeps retrying (0.5 s, 1 s, ...): its next attempt, after the reports,
        # is refused too
        n = refusals()
        ct.wait(lambda c: refusals() > n, what="another refused attempt after the reports")
        assert ct.ctl is not None and not ct.ctl.link.connected.is_set()
        assert ct.ctl.metrics.stored._value.get() == 0
    finally:
        ct.stop()
    assert stored_rows(tmp_path) == 0
    bad = [r for r in mqtt_log.records if "not trusted" in r.getMessage()]
    assert bad and all(r.levelno == logging.ERROR and r.exc_info is None for r in bad)
    line = bad[0].getMessage() + " " + str(getattr(bad[0], "error", ""))
    assert "mqtt.ca" in line and "mqtt.host" in line, line
    want = "certificate verify failed" if case == "other-ca" else "match"
    assert want in line, line


def test_unreadable_ca_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.crt"
    cfg = MqttConfig(port=1, tls=True, ca=str(missing))
    with pytest.raises(ConfigError, match=r"mqtt\.ca") as e:
        MqttLink(cfg, ["idu/1/+/+/rep"], lambda t, p, h: None)
    assert str(missing) in str(e.value)
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"mqtt\.ca"):
        MqttLink(replace(cfg, ca=str(garbage)), ["idu/1/+/+/rep"], lambda t, p, h: None)
    # `idufleet serve` turns it into one line and exit 1, not a traceback
    toml = tmp_path / "idufleet.toml"
    toml.write_text(
        f'[mqtt]\nport = {free_port()}\ntls = true\nca = "{missing}"\n'
        f'[store]\npath = "{tmp_path / "s.sqlite"}"\n'
        f'[keys]\nmaster_key_file = "{tmp_path / "master.key"}"\n'
        "[api]\nport = 0\n"
    )
    r = CliRunner().invoke(cli, ["serve", "--config", str(toml), "--init"])
    assert r.exit_code == 1, r.output
    assert "mqtt.ca" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
