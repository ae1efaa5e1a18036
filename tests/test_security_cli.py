"""`idufleet ca` + `idufleet broker`: a secured broker set up from the CLI alone, started with
the generated mosquitto.conf unchanged, then device accounts managed at runtime."""

from __future__ import annotations

import getpass
import json
import os
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.broker import MOSQUITTO, free_port, wait_port
from tests.support.secure_broker import Peer
from tools.cli import cli


@pytest.fixture
def broker_dir(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    runner = CliRunner()
    ca_dir, bdir = tmp_path / "ca", tmp_path / "broker"
    assert runner.invoke(cli, ["ca", "init", "--dir", str(ca_dir)]).exit_code == 0
    r = runner.invoke(cli, ["ca", "issue-server", "localhost", "127.0.0.1", "--dir", str(ca_dir)])
    assert r.exit_code == 0, r.output
    port, tls_port = free_port(), free_port()
    args = ["broker", "init", "--dir", str(bdir), "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-port", str(tls_port), "--ca-dir", str(ca_dir)]
    if os.geteuid() == 0:
        args += ["--user", getpass.getuser()]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([MOSQUITTO, "-c", str(bdir / "mosquitto.conf")], stdout=log, stderr=log)
    log.close()
    try:
        wait_port(port)
        wait_port(tls_port)
        yield bdir, port, tls_port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_broker_init_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "b"
    assert runner.invoke(cli, ["broker", "init", "--dir", str(d)]).exit_code == 0
    creds = d / "credentials.json"
    assert os.stat(creds).st_mode & 0o777 == 0o600
    assert os.stat(d / "dynsec.json").st_mode & 0o777 == 0o600
    before = creds.read_bytes()
    r = runner.invoke(cli, ["broker", "init", "--dir", str(d)])
    assert r.exit_code == 1 and "already holds a broker" in r.output
    assert creds.read_bytes() == before
    r = runner.invoke(
        cli,
        [
            "broker",
            "init",
            "--dir",
            str(tmp_path / "c"),
            "--tls-port",
            "8883",
            "--ca-dir",
            str(tmp_path / "noca"),
        ],
    )
    assert r.exit_code == 1 and "idufleet ca init" in r.output


def test_cli_accounts_on_a_generated_broker(
    broker_dir: tuple[Path, int, int], tmp_path: Path
) -> None:
    bdir, port, tls_port = broker_dir
    runner = CliRunner()
    pwf = tmp_path / "ap-7.pw"
    r = runner.invoke(
        cli,
        [
            "broker",
            "device",
            "add",
            "porto",
            "ap-7",
            "--dir",
            str(bdir),
            "--password-file",
            str(pwf),
        ],
    )
    assert r.exit_code == 0, r.output
    password = pwf.read_text().strip()
    assert password not in r.output and os.stat(pwf).st_mode & 0o777 == 0o600
    creds = json.loads((bdir / "credentials.json").read_text())
    ctl = creds["controller"]

    peers: list[Peer] = []
    try:
        ctx = ssl.create_default_context(cafile=creds["cafile"])
        controller = Peer(tls_port, ctl["username"], ctl["password"], tls=ctx)
        peers.append(controller)
        assert controller.connect() == 0  # the controller account exists from the first start
        assert controller.subscribe("idu/#") == [1]
        dev = Peer(port, "ap-7", password)
        peers.append(dev)
        assert dev.connect() == 0
        dev.publish("idu/1/porto/ap-8/rep", b"forged")
        dev.publish("idu/1/porto/ap-7/rep", b"mine")
        assert controller.take_until(b"mine") == [("idu/1/porto/ap-7/rep", b"mine")]
        r = runner.invoke(cli, ["broker", "device", "list", "--dir", str(bdir)])
        assert r.exit_code == 0 and "ap-7" in r.output.split()
        r = runner.invoke(cli, ["broker", "device", "disable", "ap-7", "--dir", str(bdir)])
        assert r.exit_code == 0, r.output
        again = Peer(port, "ap-7", password)
        peers.append(again)
        assert again.connect() != 0
        r = runner.invoke(cli, ["broker", "device", "delete", "porto", "ap-7", "--dir", str(bdir)])
        assert r.exit_code == 0, r.output
        r = runner.invoke(cli, ["broker", "device", "delete", "porto", "ap-7", "--dir", str(bdir)])
        assert r.exit_code == 1 and "refused" in r.output
    finally:
        for p in peers:
            p.close()
