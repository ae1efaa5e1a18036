"""firmware/board_esp32.py on the real micropython unix port, booted through startup.py against
fakes of `machine`, `network` and `ntptime` that follow the esp32 port's API
(tests/firmware/esp32/): its code paths run in the suite, not only compile. A bundle without
`wifi` is refused at boot with one console line naming the field (it was a TypeError in the
agent's first connect, then a crash loop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.harness import make_flash
from tests.support.upy import ROOT, UpyResult, run_upy

DRIVE = ROOT / "tests" / "firmware" / "esp32" / "drive.py"
WIFI = {"ssid": "porto-iot", "password": "s3cret-wpa2"}


def boot(tmp: Path, kind: str, world: dict[str, Any], **cfg: Any) -> UpyResult:
    flash = make_flash(tmp, f"esp-{kind}", 1883, kind=kind, board="esp32", **cfg)
    return run_upy(
        DRIVE,
        str(flash),
        json.dumps(world),
        path=[ROOT / "firmware", ROOT / "tests" / "firmware" / "esp32"],
        timeout=60,
    )


@pytest.mark.parametrize("wifi", [None, {}], ids=["absent", "empty"])
def test_a_bundle_without_wifi_is_refused_with_one_console_line(
    tmp_path: Path, wifi: dict[str, str] | None
) -> None:
    extra = {} if wifi is None else {"wifi": wifi}
    if wifi == {}:  # startup itself names the missing ssid
        res = boot(tmp_path, "ap", {}, **extra)
        assert res.returncode == 1 and "field 'wifi.ssid'" in res.stdout, res
        return
    res = boot(tmp_path, "ap", {}, **extra)
    assert res.returncode == 1, res
    assert "idu: refusing to start: config: field 'wifi' is missing" in res.stdout, res
    assert "--wifi-ssid" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_access_point_joins_wifi_and_counts_its_stations(tmp_path: Path) -> None:
    world = {"cause": 3, "networks": {WIFI["ssid"]: WIFI["password"]}, "stations": 4}
    res = boot(tmp_path, "ap", world, wifi=WIFI).check()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["board"] == "esp32" and out["measures"] == [16]
    assert out["values"] == [4]
    assert out["joins"] == [[WIFI["ssid"], WIFI["password"]]]
    assert out["rssi"] == -61
    assert out["clock_before_ntp"] is None and out["clock_after_ntp"]
    assert out["boot_reason"] == 2  # BOOT_WATCHDOG: machine.WDT_RESET after a clean run
    assert out["wdt_ms"] == 30000 and out["feeds"] == 1
    assert out["reset"] == "reset"
    assert not out["wifi_left_in_cfg"]  # startup drops it once the board holds it


def test_sensor_reads_sht3x_and_bh1750_in_contract_units(tmp_path: Path) -> None:
    # SHT3x: temperature raw 0x6666, humidity raw 0x8000 (CRC bytes ignored); BH1750: 500 counts
    world = {
        "networks": {WIFI["ssid"]: WIFI["password"]},
        "i2c": {"68": "666600800000", "35": "01f4"},
    }
    res = boot(tmp_path, "sensor", world, wifi=WIFI).check()
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["measures"] == [57, 58, 63]
    assert out["values"] == [
        -4500 + 17500 * 0x6666 // 65535,  # 0.01 C
        1000 * 0x8000 // 65535,  # 0.1 %RH
        500 * 10 // 12,  # lx
    ]
    assert out["i2c_writes"] == [[0x44, "2400"], [0x23, "20"]]


def test_sensor_board_with_an_empty_bus_measures_nothing(tmp_path: Path) -> None:
    world = {"networks": {WIFI["ssid"]: WIFI["password"]}}
    out = json.loads(boot(tmp_path, "sensor", world, wifi=WIFI).check().stdout.splitlines()[-1])
    assert out["measures"] == [] and out["values"] == []
