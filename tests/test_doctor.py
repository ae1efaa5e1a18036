"""`idufleet doctor` (issue 14) against a real stack: Mosquitto with the generated dynsec setup,
a running controller, its store and master key. Healthy: every line `ok`, exit 0. Then one
breakage at a time gives the FAIL line that names it, with the fix, and exit 1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from controller import registry
from controller.config import discover
from controller.keys import MasterKey, load_master
from controller.security import dynsec
from controller.security.broker_config import BrokerSettings
from controller.store import open_store
from tests.controller.harness import ControllerThread
from tests.support.secure_broker import GeneratedBroker
from tools.cli import cli

CTL_PW, TOKEN = dynsec.new_password(), "boot-token"


@dataclass
class Stack:
    toml: Path
    url: str
    tmp: Path

    def doctor(self, *extra: str, pw: str = CTL_PW) -> Result:
        return CliRunner().invoke(
            cli,
            ["doctor", "--config", str(self.toml), "--api", self.url,
             "--ca-dir", str(self.tmp / "ca"), *extra],
            env={"IDUFLEET_MQTT_PASSWORD": pw, "IDUFLEET_API_TOKEN": None, "IDUFLEET_API": None},
        )  # fmt: skip


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    admin_pw = dynsec.new_password()
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", "admin", admin_pw)
    b = GeneratedBroker(tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn))
    b.start()
    with dynsec.DynsecClient("127.0.0.1", b.port, "admin", admin_pw) as admin:
        admin.create_controller("controller", CTL_PW)
    toml = tmp_path / "idufleet.toml"
    toml.write_text(
        f'[mqtt]\nport = {b.port}\nusername = "controller"\nclient_id = "ctl-doc"\n'
        f'[store]\npath = "{tmp_path / "idu.sqlite"}"\n'
        f'[keys]\nmaster_key_file = "{tmp_path / "master.key"}"\n'
        f'[api]\nport = 0\ntoken = "{TOKEN}"\n'
    )
    assert CliRunner().invoke(cli, ["init", "--config", str(toml)]).exit_code == 0
    cfg = discover(toml)[0]
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, password=CTL_PW))
    master = load_master(cfg.keys)
    s = open_store(cfg.store)
    for i in range(2):
        registry.create_device(s, master, f"ap-{i}", "porto", "foz", "ap")
    s.close()
    ct = ControllerThread(cfg, master).start()
    try:
        yield Stack(toml, ct.url, tmp_path)
    finally:
        ct.stop()
        b.stop()


def lines(r: Result) -> dict[str, str]:
    """check name -> its line."""
    out = {}
    for line in r.output.strip().splitlines():
        state, _, rest = line.partition(" ")
        assert state in ("ok", "FAIL"), line
        out[rest.partition(":")[0]] = line
    return out


def test_doctor_healthy_then_each_breakage(stack: Stack) -> None:
    r = stack.doctor()
    got = lines(r)
    assert r.exit_code == 0, r.output
    assert set(got) == {
        "broker", "broker login", "broker acl", "store", "master key", "api", "api token",
        "clock", "tls",
    }, r.output  # fmt: skip
    assert all(v.startswith("ok ") for v in got.values()), r.output
    assert "all 2 device keys open" in got["master key"]
    assert "(admin)" in got["api token"], got["api token"]
    js = json.loads(stack.doctor("--json").output)
    assert all(c["ok"] for c in js) and {"check", "ok", "detail", "fix"} <= set(js[0])

    # 1. the wrong broker password
    r = stack.doctor(pw="wrong")
    assert r.exit_code == 1
    line = lines(r)["broker login"]
    assert line.startswith("FAIL broker login: broker refused user 'controller'"), line
    assert "— set IDUFLEET_MQTT_PASSWORD" in line and "broker acl" not in lines(r)

    # 2. a device whose key does not open with the master key
    s = open_store(discover(stack.toml)[0].store)
    registry.create_device(s, MasterKey(b"\x07" * 32), "stray-1", "porto", "foz", "ap")
    s.close()
    r = stack.doctor()
    assert r.exit_code == 1
    line = lines(r)["master key"]
    assert line.startswith("FAIL master key: 1 of 3 device keys do not open (stray-1)"), line
    assert "IDUFLEET_KEYS_MASTER_KEY" in line
    assert lines(r)["broker login"].startswith("ok ")

    # 3. an API token the controller does not accept
    r = stack.doctor("--token", "nope")
    assert r.exit_code == 1
    line = lines(r)["api token"]
    assert line.startswith("FAIL api token: refused (401)") and "--token" in line, line
