"""The zone registry ([fleet] zones): every path that creates a device or a claim token refuses a
zone outside the configured set with one line naming the known zones, exits non-zero, and
leaves nothing behind (registry row, token, bundle, output folder, broker account, board file).
An empty list accepts any well-formed zone; the shipped and demo configs stay valid."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from controller import registry
from controller.config import DEFAULT_ZONES, Config, FleetConfig, build, load
from controller.errors import ConfigError, RegistryError
from controller.keys import MasterKey
from controller.provisioning import tokens as T
from controller.security.broker_config import CREDENTIALS
from controller.store import open_store
from controller.store.sqlite import SqliteStore
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.controller.test_service import http
from tests.support.broker import Broker
from tests.support.pty_device import PtyDevice
from tools import demo
from tools.cli import cli

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[1]
MASTER = MasterKey(bytes(range(32)))
TOKEN = "op-token"


def one_line(r: Result) -> str:
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


def names_the_zones(line: str, zones: tuple[str, ...] = DEFAULT_ZONES) -> None:
    assert "unknown zone 'gaia'" in line, line
    assert "known zones: " + ", ".join(zones) in line, line
    assert "[fleet] zones" in line, line  # what to do about it


# --------------------------------------------------------------------------- config
def test_config_zones_defaults_toml_env_and_validation(tmp_path: Path) -> None:
    assert build({}, {}).fleet.zones == DEFAULT_ZONES
    assert set(demo.ZONES) <= set(DEFAULT_ZONES)  # the demo's generated config stays valid
    assert build({"fleet": {"zones": ["foz", "matosinhos"]}}, {}).fleet.zones == (
        "foz",
        "matosinhos",
    )
    assert build({"fleet": {"zones": []}}, {}).fleet.zones == ()
    env = {"IDUFLEET_FLEET_ZONES": "foz, baixa"}
    assert build({"fleet": {"zones": ["ribeira"]}}, env).fleet.zones == ("foz", "baixa")
    assert build({}, {"IDUFLEET_FLEET_ZONES": ""}).fleet.zones == ()
    assert build({"fleet": {"zones": "foz,baixa"}}, {}).fleet.zones == ("foz", "baixa")
    for bad, words in [
        ({"zones": 3}, "list of strings"),
        ({"zones": ["foz", 3]}, "list of strings"),
        ({"zones": ["Foz"]}, "fleet.zones"),
        ({"zones": ["foz", "foz"]}, "twice"),
    ]:
        with pytest.raises(ConfigError, match=words):
            build({"fleet": bad}, {})
    shipped = load(REPO / "deploy" / "idufleet.toml", {})
    doc = tomllib.loads((REPO / "deploy" / "idufleet.toml").read_text())
    assert shipped.fleet.zones == tuple(doc["fleet"]["zones"]) and "ribeira" in shipped.fleet.zones
    assert FleetConfig(zones=["foz"]).zones == ("foz",)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- library
def test_create_device_refuses_an_unknown_zone(tmp_path: Path) -> None:
    s = open_store(sqlite_config(tmp_path))
    try:
        with pytest.raises(RegistryError) as e:
            registry.create_device(s, MASTER, "ap-1", "porto", "gaia", "ap", zones=DEFAULT_ZONES)
        assert e.value.code == "unknown_zone" and "\n" not in str(e.value)
        names_the_zones(str(e.value))
        assert s.list_devices() == []
        # the set is the config's, not a fixed list; empty or None accepts any zone
        registry.create_device(s, MASTER, "ap-2", "porto", "gaia", "ap", zones=("gaia",))
        registry.create_device(s, MASTER, "ap-3", "porto", "gaia", "ap", zones=())
        registry.create_device(s, MASTER, "ap-4", "porto", "gaia", "ap")
        assert [d.id for d in s.list_devices()] == ["ap-2", "ap-3", "ap-4"]
    finally:
        s.close()
    with pytest.raises(T.ClaimError) as ce:
        T.check_request_fields("porto", "gaia", "ap", 60, 1, DEFAULT_ZONES)
    assert ce.value.code == "unknown_zone"
    names_the_zones(str(ce.value))


# --------------------------------------------------------------------------- API
@pytest.fixture
def controller(broker: Broker, tmp_path: Path) -> Iterator[ControllerThread]:
    cfg = make_config(sqlite_config(tmp_path), broker.port, token=TOKEN)
    ct = ControllerThread(replace(cfg, fleet=FleetConfig(("ribeira", "matosinhos"))), MASTER)
    yield ct.start()
    ct.stop()


def test_api_register_refuses_an_unknown_zone(controller: ControllerThread) -> None:
    url = controller.url + "/api/devices"
    status, body = http(url, {"id": "ap-x", "zone": "gaia", "kind": "ap"}, TOKEN)
    assert status == 400
    names_the_zones(body["error"], ("ribeira", "matosinhos"))
    status, body = http(url, {"id": "ap-y", "zone": "matosinhos", "kind": "ap"}, TOKEN)
    assert status == 201, body  # the configured set, not the Porto defaults
    assert http(url, {"id": "ap-z", "zone": "foz", "kind": "ap"}, TOKEN)[0] == 400
    assert [d["id"] for d in http(url, token=TOKEN)[1]] == ["ap-y"]
    assert http(controller.url + "/api/zones", token=TOKEN) == (
        200,
        {"zones": ["ribeira", "matosinhos"]},
    )


# --------------------------------------------------------------------------- CLI
def write_config(tmp_path: Path, fleet: str = "") -> Path:
    p = tmp_path / "idufleet.toml"
    p.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{tmp_path / "idu.sqlite"}"\n'
        f'[keys]\nmaster_key_file = "{tmp_path / "master.key"}"\n' + fleet
    )
    return p


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"IDUFLEET_CONFIG": str(config)})


def test_device_add_refuses_an_unknown_zone(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    bundle = tmp_path / "out" / "ap-1.json"
    r = run(cfg, "device", "add", "ap-1", "--zone", "gaia", "--kind", "ap", "--bundle", str(bundle))
    assert r.exit_code == 1
    names_the_zones(one_line(r))
    assert not bundle.parent.exists()
    assert not (tmp_path / "idu.sqlite").exists() and not (tmp_path / "master.key").exists()
    assert run(cfg, "init").exit_code == 0
    r = run(cfg, "device", "add", "ap-1", "--zone", "foz", "--kind", "ap", "--bundle", str(bundle))
    assert r.exit_code == 0, r.output
    assert json.loads(bundle.read_text())["zone"] == "foz"
    # an empty list opts out: any well-formed zone
    other = tmp_path / "any"
    other.mkdir()
    assert run(write_config(other, "[fleet]\nzones = []\n"), "init").exit_code == 0
    r = run(other / "idufleet.toml", "device", "add", "ap-2", "--zone", "gaia",
            "--kind", "sensor")  # fmt: skip
    assert r.exit_code == 0, r.output
    s = SqliteStore(other / "idu.sqlite")
    try:
        rec = s.get_device("ap-2")
        assert rec is not None and rec.zone == "gaia"
    finally:
        s.close()


def test_claim_create_refuses_an_unknown_zone(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[fleet]\nzones = ["ribeira", "baixa"]\n')
    (tmp_path / "master.key").write_text(bytes(range(32)).hex())  # MASTER's key
    broker_dir = tmp_path / "broker"  # what `broker init` + `claim setup` leave; no broker needed
    broker_dir.mkdir()
    (broker_dir / CREDENTIALS).write_text(json.dumps({"port": 1883}))
    (broker_dir / "claim.json").write_text(json.dumps({"username": "claim", "password": "pw"}))
    out = tmp_path / "claims"
    args = ["claim", "create", "--count", "2", "--out", str(out), "--broker-dir", str(broker_dir)]
    r = run(cfg, *args, "--zone", "gaia")
    assert r.exit_code == 1
    names_the_zones(one_line(r), ("ribeira", "baixa"))
    assert not out.exists()
    if (tmp_path / "idu.sqlite").exists():
        s = SqliteStore(tmp_path / "idu.sqlite")
        try:
            assert T.TokenStore(s, MASTER).list() == []
        finally:
            s.close()
    assert run(cfg, "init").exit_code == 0  # the store exists only once made on purpose
    r = run(cfg, *args, "--zone", "baixa")  # the same command with a known zone works
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("claim-*.json"))) == 2


def test_provision_refuses_an_unknown_zone_before_anything_exists(
    controller: ControllerThread, tmp_path: Path
) -> None:
    broker_dir = tmp_path / "no-broker-dir"  # never read: the zone is refused first
    keep = tmp_path / "bundle.json"
    with PtyDevice(tmp_path / "fs") as board:
        r = CliRunner().invoke(
            cli,
            [
                "provision", "--port", board.port, "--zone", "gaia", "--device", "ap-gaia",
                "--board", "unix", "--controller", controller.url, "--token", TOKEN,
                "--broker-dir", str(broker_dir), "--out", str(keep),
            ],
        )  # fmt: skip
        fs = board.fs_dir
    assert r.exit_code == 1
    line = one_line(r)
    names_the_zones(line, ("ribeira", "matosinhos"))
    assert "nothing was registered" in line
    assert not keep.exists() and not (fs / "config.json").exists()
    assert http(controller.url + "/api/devices", token=TOKEN)[1] == []


def test_cli_config_check_shows_the_zones(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert run(cfg, "init").exit_code == 0  # --check also wants the master key
    r = run(cfg, "serve", "--check")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fleet"]["zones"] == list(DEFAULT_ZONES)
    assert Config().fleet.zones == DEFAULT_ZONES
