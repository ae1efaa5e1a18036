"""/health (issue 14) answers 503 naming the reason while the broker refuses the controller's
login (a refused CONNACK), and while no registered device's key opens with the master key
(devices loaded vs registered are both in the JSON)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from controller.keys import MasterKey
from controller.security import dynsec
from controller.security.broker_config import BrokerSettings
from tests.controller.devsim import wait_for
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.controller.test_service import http, register
from tests.support.broker import Broker
from tests.support.secure_broker import GeneratedBroker


def _started(ct: ControllerThread) -> ControllerThread:
    """Started without waiting for the broker (which may refuse us): the API is up."""
    ct._thread.start()
    ct.wait(lambda c: c.api_port is not None, what="API listening")
    return ct


def test_health_is_503_while_the_broker_refuses_the_login(tmp_path: Path) -> None:
    admin_pw, ctl_pw = dynsec.new_password(), dynsec.new_password()
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", "admin", admin_pw)
    b = GeneratedBroker(tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn))
    b.start()
    ct: ControllerThread | None = None
    try:
        with dynsec.DynsecClient("127.0.0.1", b.port, "admin", admin_pw) as admin:
            admin.create_controller("controller", ctl_pw)
        cfg = make_config(sqlite_config(tmp_path), b.port)
        cfg = replace(cfg, mqtt=replace(cfg.mqtt, username="controller", password="wrong"))
        ct = _started(ControllerThread(cfg, MasterKey(b"\x01" * 32)))
        ct.wait(lambda c: c.link.refused is not None, what="a refused CONNACK")
        status, h = http(ct.url + "/health")
        assert status == 503, h
        assert h["status"] == "failing" and "broker_refused" in h["reasons"]
        assert not h["mqtt_connected"] and h["mqtt_refused"] == "Not authorized"
        with dynsec.DynsecClient("127.0.0.1", b.port, "admin", admin_pw) as admin:
            admin.set_client_password("controller", "wrong")  # the broker side fixed
        ct.wait(lambda c: c.link.connected.is_set(), 40, "login accepted after the fix")
        status, h = http(ct.url + "/health")
        assert status == 200 and h["reasons"] == [] and h["mqtt_refused"] is None, h
    finally:
        if ct is not None:
            ct.stop()
        b.stop()


def test_health_is_503_while_no_device_key_opens(tmp_path: Path, broker: Broker) -> None:
    store = sqlite_config(tmp_path)
    register(store, MasterKey(b"\x01" * 32), 2)  # wrapped under another master key
    ct = ControllerThread(make_config(store, broker.port), MasterKey(b"\x02" * 32)).start()
    try:
        status, h = http(ct.url + "/health")
        assert status == 503 and h["reasons"] == ["device_keys_unopened"], h
        assert h["devices_registered"] == 2 and h["devices_loaded"] == 0
    finally:
        ct.stop()
    good = tmp_path / "good"
    good.mkdir()
    store = sqlite_config(good)
    register(store, MasterKey(b"\x02" * 32), 2)
    ct = ControllerThread(make_config(store, broker.port), MasterKey(b"\x02" * 32)).start()
    try:
        wait_for(lambda: http(ct.url + "/health")[0] == 200, 10, "healthy")
        h = http(ct.url + "/health")[1]
        assert h["devices_registered"] == 2 and h["devices_loaded"] == 2, h
    finally:
        ct.stop()
