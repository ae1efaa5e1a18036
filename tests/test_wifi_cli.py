"""Wi-Fi credentials in bundles: `device add --bundle`, `claim create` and `provision` take
--wifi-ssid and the password from a file or a hidden prompt (never an argument), store them in the
bundle's `wifi` field and never print them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tools.cli import cli

SSID, PW = "porto-iot", "correct horse battery"


def write_config(tmp: Path) -> Path:
    p = tmp / "idufleet.toml"
    p.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{tmp / "idu.sqlite"}"\n'
        f'[keys]\nmaster_key_file = "{tmp / "master.key"}"\n'
    )
    return p


def registered(tmp: Path) -> list[str]:
    """The device ids in the test's store (nothing may be registered when a command refuses)."""
    import sqlite3

    db = tmp / "idu.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT id FROM devices")]


def run(config: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"IDUFLEET_CONFIG": str(config)}, input=stdin)


def add(tmp: Path, *wifi: str, stdin: str | None = None) -> tuple[Result, Path]:
    bundle = tmp / "ap-1.json"
    config = write_config(tmp)
    made = run(config, "init")  # only init creates a store and a master key
    assert made.exit_code == 0, made.output
    args = ("device", "add", "ap-1", "--zone", "foz", "--kind", "ap", "--bundle", str(bundle))
    return run(config, *args, *wifi, stdin=stdin), bundle


def test_device_add_writes_wifi_from_a_password_file(tmp_path: Path) -> None:
    pw_file = tmp_path / "wifi.pw"
    pw_file.write_text(PW + "\n")
    r, bundle = add(tmp_path, "--wifi-ssid", SSID, "--wifi-password-file", str(pw_file))
    assert r.exit_code == 0, r.output
    assert json.loads(bundle.read_text())["wifi"] == {"ssid": SSID, "password": PW}
    assert PW not in r.output


def test_device_add_asks_for_the_password_without_echoing_it(tmp_path: Path) -> None:
    r, bundle = add(tmp_path, "--wifi-ssid", SSID, stdin=PW + "\n")
    assert r.exit_code == 0, r.output
    assert json.loads(bundle.read_text())["wifi"] == {"ssid": SSID, "password": PW}
    assert "Wi-Fi password for porto-iot" in r.output and PW not in r.output


def test_an_empty_password_is_an_open_network(tmp_path: Path) -> None:
    r, bundle = add(tmp_path, "--wifi-ssid", SSID, stdin="\n")
    assert r.exit_code == 0, r.output
    assert json.loads(bundle.read_text())["wifi"] == {"ssid": SSID, "password": None}


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("--wifi-password", PW), 2, "No such option"),  # never a plain argument
        (("--wifi-password-file", "/dev/null"), 2, "needs --wifi-ssid"),
    ],
)
def test_refusals_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], code: int, says: str
) -> None:
    r, bundle = add(tmp_path, *args)
    assert r.exit_code == code and says in r.output, r.output
    assert not bundle.exists() and not registered(tmp_path)


def test_a_password_wpa2_refuses_is_one_line_and_nothing_is_registered(tmp_path: Path) -> None:
    r, bundle = add(tmp_path, "--wifi-ssid", SSID, stdin="short\n")
    assert r.exit_code == 1
    assert "8-63 characters" in r.output.strip().splitlines()[-1]
    assert not bundle.exists() and not registered(tmp_path)


def test_wifi_needs_a_bundle(tmp_path: Path) -> None:
    r = run(write_config(tmp_path), "device", "add", "ap-1", "--zone", "foz", "--kind", "ap",
            "--wifi-ssid", SSID)  # fmt: skip
    assert r.exit_code == 2 and "--bundle" in r.output
