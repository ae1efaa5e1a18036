"""Revoke and enable are symmetrical across the registry and the broker, and a revoked device
is offline at once (a presence event written by the disable, not the silence timeout). Real
parts: Mosquitto with dynsec, the real Controller, the CLI."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.claimkit import wait_for
from tests.test_provision_rotate_revoke import TOKEN, Publisher, World
from tests.test_provision_rotate_revoke import world as world
from tools.cli import cli

pytestmark = pytest.mark.timeout(120)


def api_device(w: World, device: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{w.ct.url}/api/devices/{device}")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def presence_rows(w: World, device: str) -> list[tuple[str, str]]:
    with sqlite3.connect(w.db) as c:
        rows = c.execute(
            "SELECT state, reason FROM presence WHERE device_id = ? ORDER BY ts, id", (device,)
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def test_enable_undoes_revoke_and_revoke_is_offline_at_once(world: World, tmp_path: Path) -> None:
    w = world
    key, pw = w.add_device("ap-back")
    pub = Publisher(w.broker.port, "ap-back", key, pw, hz=10).start(w.broker.port)
    try:
        assert wait_for(lambda: len(w.stored("ap-back")) >= 3, 15)
        assert api_device(w, "ap-back")["online"] is True
        res = w.cli("device", "revoke", "ap-back", "--api", w.ct.url, "--token", TOKEN,
                    "--broker-dir", str(w.broker_dir))  # fmt: skip
        assert res.exit_code == 0, res.output
        # offline at once (the silence timeout is 30 s or more), and the change is stored
        assert api_device(w, "ap-back")["online"] is False
        assert wait_for(lambda: ("offline", "disabled") in presence_rows(w, "ap-back"), 5)
        assert wait_for(lambda: pub.refused_connacks >= 1, 5)

        conf = tmp_path / "idufleet.toml"
        conf.write_text(f'[store]\npath = "{w.db}"\n')
        res = CliRunner().invoke(
            cli,
            ["device", "enable", "ap-back", "--config", str(conf), "--broker-dir",
             str(w.broker_dir)],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "broker account enabled" in res.output
        # the broker lets it in again (its reconnect loop gets through) and, once the
        # controller re-reads the registry, its reports are stored again
        n = len(w.stored("ap-back"))
        assert wait_for(lambda: pub.c.is_connected(), 10), "broker account still disabled"
        assert wait_for(lambda: len(w.stored("ap-back")) > n, 20)
    finally:
        pub.stop()


def test_enable_without_broker_dir_says_what_remains(world: World, tmp_path: Path) -> None:
    w = world
    w.add_device("ap-half")
    conf = tmp_path / "idufleet.toml"
    conf.write_text(f'[store]\npath = "{w.db}"\n')
    res = CliRunner().invoke(
        cli, ["device", "enable", "ap-half", "--config", str(conf), "--broker-dir",
              str(tmp_path / "nope")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "idufleet broker device enable ap-half" in res.output
