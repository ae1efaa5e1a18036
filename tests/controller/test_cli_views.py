"""What operators read: `devices` (ids never cut, on a narrow terminal or a pipe; filters),
`device show` (latest values with units, presence, events, diagnostics by name), and the errors
a typo gets (close names, exit 1) instead of an empty answer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from controller import registry
from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.store import open_store
from tests.controller.devsim import SimDevice
from tests.controller.harness import ControllerThread, make_config
from tests.support.broker import Broker
from tools.cli import cli
from tools.fleet_cmds import devices_table

LONG = ["sensor-ribeira-noise-0001", "sensor-ribeira-noise-0002", "sensor-boavista-air-quality-01"]


def rows(ids: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": i, "site": "porto", "zone": "ribeira", "kind": "noise", "status": "active",
         "online": n % 2 == 0, "last_seen": None, "firmware": "1.4.0-rc.2+g1234567",
         "boot_epoch": 123456, "tags": {}}
        for n, i in enumerate(ids)
    ]  # fmt: skip


@pytest.mark.parametrize("width", [80, 60, 40, 24])
def test_devices_table_keeps_every_id_whole(width: int) -> None:
    out = io.StringIO()
    console = Console(width=width, file=out, color_system=None)
    console.print(devices_table(rows(LONG), console.width))
    text = out.getvalue()
    assert "…" not in text
    flat = text.replace("\n", "")
    for i in LONG:
        assert i in text or (width < len(i) and i in flat.replace(" ", "")), text
    assert max(len(line) for line in text.splitlines()) <= width


def test_devices_on_a_pipe_keeps_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tools.fleet_cmds.ApiClient.get", lambda self, path, **q: rows(LONG))
    monkeypatch.delenv("COLUMNS", raising=False)
    r = CliRunner().invoke(cli, ["devices", "--api", "http://x:1"], env={"IDUFLEET_API_TOKEN": "t"})
    assert r.exit_code == 0, r.output
    for i in LONG:
        assert i in r.output, r.output
    assert "…" not in r.output


@pytest.fixture
def fleet(tmp_path: Path, master: MasterKey, broker: Broker) -> Any:
    store_cfg = StoreConfig(backend="sqlite", path=str(tmp_path / "idu.sqlite"))
    s = open_store(store_cfg)
    keys = {}
    for dev, zone, tags in [
        ("ap-ribeira-1", "ribeira", {"street": "flores"}),
        ("ap-ribeira-2", "ribeira", {"street": "cais"}),
        ("ap-foz-1", "foz", {}),
    ]:
        keys[dev] = registry.create_device(s, master, dev, "porto", zone, "ap", tags).key
    s.close()
    ct = ControllerThread(make_config(store_cfg, broker.port), master).start()
    sims = []
    try:
        d = SimDevice("ap-ribeira-1", keys["ap-ribeira-1"], broker.port)
        d.connect(respond=True)
        sims.append(d)
        d.report({16: 5, 3: -61})
        ct.wait(lambda c: c.metrics.stored._value.get() >= 2, what="2 stored")
        yield ct
    finally:
        for d in sims:
            d.close()
        ct.stop()


def run(ct: ControllerThread, *args: str) -> Any:
    return CliRunner().invoke(
        cli, list(args), env={"IDUFLEET_API": ct.url, "IDUFLEET_API_TOKEN": "secret-token"}
    )


def test_device_show_and_filters(fleet: ControllerThread) -> None:
    r = run(fleet, "command", "ap-ribeira-1", "diagnostics", "--wait", "10")
    assert r.exit_code == 0, r.output
    r = run(fleet, "device", "show", "ap-ribeira-1")
    assert r.exit_code == 0, r.output
    assert "5 clients" in r.output and "-61 dBm" in r.output  # units beside values
    assert "online" in r.output  # presence history
    assert "heap_free" in r.output  # diagnostics by name
    r = run(fleet, "device", "show", "ap-ribeira-1", "--json")
    d = json.loads(r.output)
    assert d["latest"]["clients"]["unit"] == "clients"
    assert d["diagnostics"]["values"] == {"heap_free": 1}
    assert [p["state"] for p in d["presence"]][-1] == "online"

    def ids(*args: str) -> list[str]:
        r = run(fleet, "devices", "--json", *args)
        assert r.exit_code == 0, r.output
        return [d["id"] for d in json.loads(r.output)]

    assert ids("--zone", "foz") == ["ap-foz-1"]
    assert ids("--tag", "street=cais") == ["ap-ribeira-2"]
    assert ids("--site", "porto", "--zone", "ribeira") == ["ap-ribeira-1", "ap-ribeira-2"]
    r = run(fleet, "devices", "--tag", "street")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_typos_are_errors_with_close_names(fleet: ControllerThread) -> None:
    r = run(fleet, "metrics", "nosuch", "--metric", "clients")
    assert r.exit_code == 1 and "no device 'nosuch'" in r.output and "ap-foz-1" in r.output
    r = run(fleet, "metrics", "ap-ribeira-l", "--metric", "clients")
    assert r.exit_code == 1 and "ap-ribeira-1?" in r.output, r.output
    r = run(fleet, "metrics", "--zone", "nowhere", "--metric", "clients")
    assert r.exit_code == 1 and "no zone 'nowhere'" in r.output and "foz" in r.output
    r = run(fleet, "devices", "--zone", "ribiera")
    assert r.exit_code == 1 and "did you mean ribeira" in r.output, r.output
    r = run(fleet, "device", "show", "ap-fox-1")
    assert r.exit_code == 1 and "did you mean ap-foz-1" in r.output, r.output
    r = run(fleet, "metrics", "--zone", "ribeira", "--metric", "clients", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["points"][0]["value"] == 5.0
    r = run(fleet, "devices", "--zone", "foz", "--offline", "--json")  # a known zone: empty is ok
    assert r.exit_code == 0 and json.loads(r.output)[0]["id"] == "ap-foz-1"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["metrics", "ap-1", "--metric", "clients", "--since", "yesterday"], 2, "90s, 15m, 6h"),
        (["metrics", "ap-1", "--metric", "clientz"], 2, "did you mean clients"),
        (["protocol", "decode", "foo", "zz"], 2, "idu/1/SITE/DEVICE/CHANNEL"),
        (["protocol", "decode", "idu/1/porto/ap-1/rep", "zz"], 2, "is not hex; give"),
        (["devices", "--api", "127.0.0.1:8080"], 1, "give http://HOST:PORT"),
    ],
)
def test_bad_values_say_what_is_accepted(args: list[str], code: int, says: str) -> None:
    r = CliRunner().invoke(cli, args, env={"IDUFLEET_API": "http://127.0.0.1:1"})
    assert r.exit_code == code, r.output
    assert says in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1
