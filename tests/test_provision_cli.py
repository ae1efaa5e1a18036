"""The provisioning CLI against real parts: `idufleet claim setup/create/list` with a real broker
directory and store, then a board claims with one of the written bundles; `idufleet provision`
onto the MicroPython unix port on a pseudo-terminal (its raw REPL answers mpremote) with a real
controller API and dynsec broker; and bad input giving one-line errors with nothing half-made."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from controller import registry
from controller.keys import MasterKey
from controller.provisioning import tokens as T
from controller.provisioning.claim_service import ClaimResponder, ClaimService
from controller.security import dynsec
from controller.store.sqlite import SqliteStore
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.support.claimkit import device_bytecode
from tests.support.pty_device import PtyDevice
from tests.support.secure_broker import GeneratedBroker, Peer, start_dynsec_site
from tests.support.upy import run_upy
from tools.cli import cli

pytestmark = pytest.mark.timeout(180)

ADMIN, ADMIN_PW = "admin", dynsec.new_password()
CTL, CTL_PW = "controller", dynsec.new_password()
TOKEN = "op-token"


@dataclass
class Site:
    broker: GeneratedBroker
    admin: dynsec.DynsecClient
    broker_dir: Path
    config: Path  # controller TOML (store + master key file)
    db: Path
    master: MasterKey
    tmp: Path

    def run(self, *args: str) -> Result:
        env = {"IDUFLEET_CONFIG": str(self.config)}
        return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    b, admin, broker_dir = start_dynsec_site(tmp_path, (ADMIN, ADMIN_PW), (CTL, CTL_PW))
    master = os.urandom(32)
    key_file = tmp_path / "master.key"
    key_file.write_text(master.hex())
    db = tmp_path / "idu.sqlite"
    config = tmp_path / "idufleet.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{db}"\n'
        f'[keys]\nmaster_key_file = "{key_file}"\n'
        f'[mqtt]\nport = {b.port}\nusername = "{CTL}"\npassword = "{CTL_PW}"\n'
    )
    s = Site(b, admin, broker_dir, config, db, MasterKey(master), tmp_path)
    assert s.run("init").exit_code == 0  # the store, made on purpose
    yield s
    admin.close()
    b.stop()


def one_line(res: Result) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def test_claim_setup_create_list_then_a_board_claims(site: Site, tmp_path: Path) -> None:
    r = site.run("claim", "setup", "--broker-dir", str(site.broker_dir))
    assert r.exit_code == 0, r.output
    assert (site.broker_dir / "claim.json").stat().st_mode & 0o777 == 0o600
    again = site.run("claim", "setup", "--broker-dir", str(site.broker_dir))
    assert again.exit_code == 1 and "already set up" in one_line(again)

    out = tmp_path / "claims"
    r = site.run(
        "claim", "create", "--zone", "ribeira", "--count", "3", "--ttl", "2d",
        "--out", str(out), "--broker-dir", str(site.broker_dir),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "issued 3 claim token(s)" in r.output
    files = sorted(out.glob("claim-*.json"))
    assert len(files) == 3
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600
        doc = json.loads(f.read_text())
        assert set(doc) >= {"site", "zone", "kind", "claim", "broker"}
        assert "key" not in doc and "device" not in doc
        assert doc["broker"]["username"] == "claim" and doc["broker"]["port"] == site.broker.port
        assert doc["claim"]["secret"] not in r.output
    lst = site.run("claim", "list")
    assert lst.exit_code == 0 and lst.output.count(" open ") == 3

    # a board flashed with one of these bundles claims it through the claim service
    store = SqliteStore(site.db)
    svc = ClaimService(
        ClaimResponder(store, site.master, site.admin), "127.0.0.1", site.broker.port, CTL, CTL_PW
    ).start()
    try:
        flash = tmp_path / "board"
        flash.mkdir()
        (flash / "config.json").write_text(files[0].read_text())
        script = tmp_path / "claim_run.py"
        script.write_text(f"import claim\nprint('RESULT', claim.ensure({str(flash)!r}, 2, 200))\n")
        mpy = device_bytecode(tmp_path / "mpy")
        res = run_upy(script, heap=os.environ.get("IDU_TEST_HEAP", "64K"), path=[mpy])
        assert "RESULT True" in res.stdout, res.stdout + res.stderr
    finally:
        svc.stop()
        store.close()
    lst = site.run("claim", "list", "--zone", "ribeira")
    assert lst.output.count(" open ") == 2 and lst.output.count(" used ") == 1


def test_claim_create_puts_wifi_in_every_bundle(site: Site, tmp_path: Path) -> None:
    assert site.run("claim", "setup", "--broker-dir", str(site.broker_dir)).exit_code == 0
    pw = tmp_path / "wifi.pw"
    pw.write_text("correct horse battery\n")
    out = tmp_path / "claims"
    r = site.run(
        "claim", "create", "--zone", "ribeira", "--count", "2", "--out", str(out),
        "--broker-dir", str(site.broker_dir), "--wifi-ssid", "porto-iot",
        "--wifi-password-file", str(pw),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    files = sorted(out.glob("claim-*.json"))
    assert len(files) == 2
    for f in files:
        wifi = json.loads(f.read_text())["wifi"]
        assert wifi == {"ssid": "porto-iot", "password": "correct horse battery"}
    assert "correct horse battery" not in r.output


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--zone", "Ribeira!"], 2, "zone"),
        (["--zone", "ribeira", "--count", "0"], 2, "count"),
        (["--zone", "ribeira", "--ttl", "soon"], 2, "duration"),
        (["--zone", "ribeira"], 1, "claim setup"),  # bootstrap account not set up yet
    ],
)
def test_claim_create_bad_input(
    site: Site, tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    out = tmp_path / "claims"
    r = site.run("claim", "create", *args, "--out", str(out), "--broker-dir", str(site.broker_dir))
    assert r.exit_code == code, r.output
    assert words in r.output
    assert not out.exists() or not list(out.iterdir())
    if site.db.exists():
        s = SqliteStore(site.db)
        try:
            assert T.TokenStore(s, site.master).list() == []
        finally:
            s.close()


@pytest.fixture
def controller(site: Site) -> Iterator[ControllerThread]:
    store = sqlite_config(site.tmp)
    cfg = make_config(store, site.broker.port, token=TOKEN)
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, username=CTL, password=CTL_PW))
    ct = ControllerThread(cfg, site.master).start()
    yield ct
    ct.stop()


def test_provision_onto_a_unix_port_board(
    site: Site, controller: ControllerThread, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.json"
    with PtyDevice(tmp_path / "fs") as board:
        r = site.run(
            "provision", "--port", board.port, "--zone", "ribeira", "--device", "ap-direct-1",
            "--board", "unix", "--controller", controller.url, "--token", TOKEN,
            "--broker-dir", str(site.broker_dir), "--out", str(bundle),
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        fs = board.fs_dir
    assert "provisioned ap-direct-1" in r.output
    on_board = json.loads((fs / "config.json").read_text())
    assert on_board == json.loads(bundle.read_text())
    assert bundle.stat().st_mode & 0o777 == 0o600
    assert on_board["key"] not in r.output and on_board["broker"]["password"] not in r.output
    assert (fs / "main.py").exists() and (fs / "_mpy" / "protocol" / "claim.mpy").exists()
    s = SqliteStore(tmp_path / "idu.sqlite")
    try:
        assert registry.device_key(s, site.master, "ap-direct-1").hex() == on_board["key"]
    finally:
        s.close()
    p = Peer(site.broker.port, "ap-direct-1", on_board["broker"]["password"])
    try:
        assert p.connect() == 0  # its own broker account works
    finally:
        p.close()


def test_provision_bad_port_leaves_nothing(
    site: Site, controller: ControllerThread, tmp_path: Path
) -> None:
    r = site.run(
        "provision", "--port", str(tmp_path / "ttyUSB9"), "--zone", "ribeira",
        "--device", "ap-nope", "--controller", controller.url, "--token", TOKEN,
        "--broker-dir", str(site.broker_dir),
    )  # fmt: skip
    assert r.exit_code == 1
    assert "no such port" in one_line(r)
    s = SqliteStore(tmp_path / "idu.sqlite")
    try:
        assert s.get_device("ap-nope") is None
    finally:
        s.close()
    assert "ap-nope" not in site.admin.list_clients()


def test_provision_wrong_token_leaves_nothing(
    site: Site, controller: ControllerThread, tmp_path: Path
) -> None:
    with PtyDevice(tmp_path / "fs") as board:
        r = site.run(
            "provision", "--port", board.port, "--zone", "ribeira", "--device", "ap-tok",
            "--board", "unix", "--controller", controller.url, "--token", "wrong",
            "--broker-dir", str(site.broker_dir),
        )  # fmt: skip
        fs = board.fs_dir
    assert r.exit_code == 1
    assert "401" in one_line(r) and "nothing was registered" in r.output
    assert "ap-tok" not in site.admin.list_clients()  # the broker account was taken back
    assert not (fs / "config.json").exists()


def test_claim_serve_answers_boards_and_counts(site: Site, tmp_path: Path) -> None:
    """`idufleet claim serve` as its own process (the deployment path), with its metrics port."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.support.broker import free_port

    assert site.run("claim", "setup", "--broker-dir", str(site.broker_dir)).exit_code == 0
    out = tmp_path / "claims"
    r = site.run(
        "claim", "create", "--zone", "baixa", "--count", "2", "--out", str(out),
        "--broker-dir", str(site.broker_dir),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    mport = free_port()
    idufleet = Path(sys.executable).parent / "idufleet"
    proc = subprocess.Popen(
        [str(idufleet), "claim", "serve", "--broker-dir", str(site.broker_dir),
         "--metrics-port", str(mport)],
        env={**os.environ, "IDUFLEET_CONFIG": str(site.config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "claim service on" in line, line + proc.stdout.read()
        mpy = device_bytecode(tmp_path / "mpy")
        bundles = sorted(out.glob("claim-*.json"))
        results = []
        for i, name in enumerate(("b1", "b2")):
            flash = tmp_path / name
            flash.mkdir()
            # b2 gets b1's bundle: a copied bundle is refused
            (flash / "config.json").write_text(bundles[0].read_text())
            script = tmp_path / f"run_{name}.py"
            script.write_text(
                "import claim\ntry:\n"
                f"    print('RESULT', claim.ensure({str(flash)!r}, 2, 200))\n"
                "except claim.ClaimFailed as e:\n    print('FAILED', e.args[0])\n"
            )
            res = run_upy(script, heap=os.environ.get("IDU_TEST_HEAP", "64K"), path=[mpy])
            results.append(res.stdout)
            assert i == 0 or "(used)" in res.stdout, res.stdout
        assert "RESULT True" in results[0], results[0]
        deadline = time.monotonic() + 5
        text = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as m:
                text = m.read().decode()
            if 'idufleet_claims_total{result="used"} 1.0' in text:
                break
            time.sleep(0.1)
        assert 'idufleet_claims_total{result="ok"} 1.0' in text
        assert 'idufleet_claims_total{result="used"} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_flash_a_claim_bundle_onto_a_board(site: Site, tmp_path: Path) -> None:
    """Bulk preparation: `idufleet flash --bundle claim-....json` onto the unix port on a pty;
    a board that already holds a device identity is not silently turned into a claim board."""
    assert site.run("claim", "setup", "--broker-dir", str(site.broker_dir)).exit_code == 0
    out = tmp_path / "claims"
    r = site.run(
        "claim", "create", "--zone", "foz", "--out", str(out), "--broker-dir", str(site.broker_dir)
    )
    assert r.exit_code == 0, r.output
    (bundle,) = out.glob("claim-*.json")
    with PtyDevice(tmp_path / "fs") as board:
        r = site.run(
            "flash", "--port", board.port, "--board", "unix", "--no-agent",
            "--bundle", str(bundle), "--timeout", "5",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads((board.fs_dir / "config.json").read_text()) == json.loads(
            bundle.read_text()
        )
    with PtyDevice(tmp_path / "fs2") as board:
        held = {"device": "ap-held", "key": "ab" * 32}
        (board.fs_dir / "config.json").write_text(json.dumps(held))
        r = site.run(
            "flash", "--port", board.port, "--board", "unix", "--no-agent",
            "--bundle", str(bundle), "--timeout", "5",
        )  # fmt: skip
        assert r.exit_code == 1
        assert "holds device 'ap-held'" in r.output
        assert json.loads((board.fs_dir / "config.json").read_text()) == held
