"""The claim flow end to end: a real Mosquitto with the dynamic security plugin, the claim
responder (controller/provisioning) with a real SQLite registry, and the real micropython binary
running firmware/claim.py from a claim bundle; then the agent boots on the rewritten config.json
and its signed BIRTH verifies with the key the registry holds. Reuse, expiry and forgery are
refused, counted, and leave nothing behind."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller import registry
from controller.keys import MasterKey
from controller.provisioning import tokens as T
from controller.provisioning.bundles import broker_block, claim_bundle, write_bundle
from controller.provisioning.claim_service import (
    CLAIM_USER,
    ClaimResponder,
    ClaimService,
    bootstrap_commands,
)
from controller.security import dynsec
from controller.security.broker_config import BrokerSettings
from controller.store.sqlite import SqliteStore
from protocol import claim as wire
from protocol import topics
from protocol.envelope import decode
from protocol.sign import Signer
from tests.support.claimkit import device_bytecode, wait_for
from tests.support.secure_broker import GeneratedBroker, Peer
from tests.support.upy import UpyResult, debian_hosts, run_upy

pytestmark = pytest.mark.timeout(120)

ADMIN, ADMIN_PW = "admin", dynsec.new_password()
CTL, CTL_PW = "controller", dynsec.new_password()
CLAIM_PW = dynsec.new_password()
# the agent tests' heap (tests/firmware/harness.py, firmware/README.md "Heap")
UPY_HEAP = os.environ.get("IDU_TEST_HEAP", "64K")


@dataclass
class Rig:
    broker: GeneratedBroker
    admin: dynsec.DynsecClient
    store_path: Path
    master: MasterKey
    responder: ClaimResponder
    service: ClaimService
    mpy: Path
    tmp: Path

    def store(self) -> SqliteStore:
        """A second connection for the test thread (the responder owns its own)."""
        s = SqliteStore(self.store_path)
        s.migrate()
        return s

    def issue(self, n: int = 1, ttl: float = 3600, now: float | None = None) -> list[T.IssuedToken]:
        s = self.store()
        try:
            return T.TokenStore(s, self.master).issue("porto", "ribeira", "ap", n, ttl, now)
        finally:
            s.close()

    def flash_for(
        self, tok: T.IssuedToken, name: str, wait_ms: int | None = None, host: str = "127.0.0.1"
    ) -> Path:
        """A board holding tok's claim bundle; wait_ms: its claim.wait_ms (default 8 s)."""
        flash = self.tmp / name
        flash.mkdir()
        broker = broker_block(host, self.broker.port, CLAIM_USER, CLAIM_PW)
        extra = {"interval": 1, "keepalive": 10, "sim": {"speed": 20, "seed": 3}}
        cfg = claim_bundle(tok, broker, **extra)
        if wait_ms is not None:
            cfg["claim"]["wait_ms"] = wait_ms
        write_bundle(flash / "config.json", cfg)
        return flash

    def claim(self, flash: Path, attempts: int = 2, prefix: list[str] | None = None) -> UpyResult:
        script = (
            "import sys\nimport claim\n"
            "try:\n"
            f"    print('RESULT', claim.ensure({str(flash)!r}, {attempts}, 200))\n"
            "except claim.ClaimFailed as e:\n"
            "    print('FAILED', e.args[0])\n"
            "    sys.exit(3)\n"
        )
        path = flash.parent / f"claim_{flash.name}.py"  # a file: `-c` text costs heap too
        path.write_text(script)
        return run_upy(path, heap=UPY_HEAP, path=[self.mpy], timeout=60, prefix=prefix)


@pytest.fixture(scope="module")
def mpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return device_bytecode(tmp_path_factory.mktemp("claim-mpy"))


@pytest.fixture
def rig(tmp_path: Path, mpy: Path) -> Iterator[Rig]:
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", ADMIN, ADMIN_PW)
    b = GeneratedBroker(tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn))
    b.start()
    admin = dynsec.DynsecClient("127.0.0.1", b.port, ADMIN, ADMIN_PW).connect()
    admin.create_controller(CTL, CTL_PW)
    admin.run(bootstrap_commands(CLAIM_PW, CTL))
    master = MasterKey(os.urandom(32))
    store_path = tmp_path / "idu.sqlite"
    store = SqliteStore(store_path)
    store.migrate()
    responder = ClaimResponder(store, master, admin)
    service = ClaimService(responder, "127.0.0.1", b.port, CTL, CTL_PW).start()
    r = Rig(b, admin, store_path, master, responder, service, mpy, tmp_path)
    yield r
    service.stop()
    admin.close()
    store.close()
    b.stop()


def _config(flash: Path) -> dict[str, object]:
    cfg: dict[str, object] = json.loads((flash / "config.json").read_text())
    return cfg


def test_board_claims_and_boots_into_the_agent(rig: Rig) -> None:
    (tok,) = rig.issue()
    flash = rig.flash_for(tok, "board1")
    assert (flash / "config.json").stat().st_mode & 0o777 == 0o600
    t0 = time.monotonic()
    res = rig.claim(flash)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    device = T.device_id_for("ribeira", tok.id)
    assert f"RESULT {device}" not in res.stdout  # ensure() returns True, run() the id
    assert "RESULT True" in res.stdout and f"claimed as {device}" in res.stdout
    cfg = _config(flash)
    assert "claim" not in cfg and cfg["device"] == device and cfg["zone"] == "ribeira"
    broker = cfg["broker"]
    assert isinstance(broker, dict) and broker["username"] == device and broker["password"]
    assert not (flash / "claim.key").exists()
    s = rig.store()
    try:
        key = registry.device_key(s, rig.master, device)
        rec = s.get_device(device)
        tok_rec = T.TokenStore(s, rig.master).get(tok.id)
    finally:
        s.close()
    assert cfg["key"] == key.hex()
    assert rec is not None and rec.zone == "ribeira" and rec.kind == "ap"
    assert tok_rec is not None and tok_rec.used_at is not None and tok_rec.device_id == device
    assert rig.responder.counters.get(T.OK) == 1
    assert elapsed < 20

    # reboot into the normal agent: its BIRTH is signed with the registry's key, over its own
    # broker account (the controller's account reads the idu tree)
    from tests.firmware.harness import Agent

    obs = Peer(rig.broker.port, CTL, CTL_PW)
    assert obs.connect() == 0
    obs.subscribe(f"idu/1/porto/{device}/#")
    agent = Agent(flash).start()
    try:
        got: list[tuple[str, bytes]] = []

        def birth() -> bool:
            while not obs.messages.empty():
                got.append(obs.messages.get())
            return any(t.endswith("/birth") for t, _ in got)

        assert wait_for(birth, 30), agent.console()
        t, p = next((t, p) for t, p in got if t.endswith("/birth"))
        msg = decode(p, t, Signer(key))
        assert msg.type == 1
    finally:
        agent.kill()
        obs.close()


def test_claim_reaches_an_ipv4_broker_named_localhost_that_resolves_to_ipv6_first(
    rig: Rig,
) -> None:
    """Debian's default /etc/hosts gives "localhost" as ::1 first; the broker listens on
    127.0.0.1 only. The claim path must try every address with its own family (it used an
    AF_INET socket for ::1 and failed with errno 97)."""
    (tok,) = rig.issue()
    flash = rig.flash_for(tok, "b-dual", host="localhost")
    res = rig.claim(flash, prefix=debian_hosts(rig.tmp))
    assert res.returncode == 0 and "RESULT True" in res.stdout, res.stdout + res.stderr
    assert "claim" not in _config(flash)


def test_reuse_by_another_board_is_refused_and_counted(rig: Rig) -> None:
    (tok,) = rig.issue()
    first = rig.flash_for(tok, "first")
    assert rig.claim(first).returncode == 0
    second = rig.flash_for(tok, "second")  # a copy of the same bundle on another board
    before = second.joinpath("config.json").read_text()
    res = rig.claim(second)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "FAILED controller refused claim token" in res.stdout and "(used)" in res.stdout
    assert second.joinpath("config.json").read_text() == before  # nothing half-written
    assert rig.responder.counters.get(T.USED) == 1
    s = rig.store()
    try:
        assert len(s.list_devices()) == 1
    finally:
        s.close()


def _ask(rig: Rig, tok: T.IssuedToken, priv: bytes) -> tuple[int, dict[int, object] | None]:
    """One claim request over MQTT from CPython as the bootstrap account; the decoded answer."""
    _, pub = wire.keypair(priv)
    p = Peer(rig.broker.port, CLAIM_USER, CLAIM_PW)
    assert p.connect() == 0
    try:
        resp = wire.topic(tok.id, wire.RESP)
        assert p.subscribe(resp)[0] < 0x80
        nonce = os.urandom(16)
        t, payload = wire.encode_request(tok.id, tok.secret, nonce, pub)
        p.publish(t, payload)
        topic, answer = p.messages.get(timeout=10)
        return wire.decode_response(topic, answer, tok.id, tok.secret, priv, pub, nonce)
    finally:
        p.close()


def test_lost_answer_same_board_gets_its_identity_again(rig: Rig) -> None:
    """The board's first answer is lost (here: CPython asked with the board's key and dropped
    it); the board, booting again with the same claim.key, is answered with the same identity
    and a fresh broker password. Another key pair gets `used`."""
    (tok,) = rig.issue()
    flash = rig.flash_for(tok, "again")
    priv = os.urandom(32)
    (flash / "claim.key").write_bytes(priv)
    status, ident = _ask(rig, tok, priv)
    assert status == wire.OK and ident is not None
    res = rig.claim(flash)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = _config(flash)
    assert cfg["device"] == ident[wire.I_DEVICE]
    key = ident[wire.I_KEY]
    assert isinstance(key, bytes) and cfg["key"] == key.hex()
    broker = cfg["broker"]
    assert isinstance(broker, dict) and broker["password"] != ident[wire.I_PASSWORD]
    old = Peer(rig.broker.port, str(ident[wire.I_DEVICE]), str(ident[wire.I_PASSWORD]))
    assert old.connect() != 0  # the lost password no longer opens the account
    old.close()
    new = Peer(rig.broker.port, str(cfg["device"]), str(broker["password"]))
    assert new.connect() == 0
    new.close()
    assert rig.responder.counters.get(T.OK) == 1
    assert rig.responder.counters.get(T.REDELIVERED) == 1
    assert _ask(rig, tok, os.urandom(32)) == (wire.USED, None)
    assert rig.responder.counters.get(T.USED) == 1


def test_expired_token_refused_and_counted(rig: Rig) -> None:
    (tok,) = rig.issue(ttl=60, now=time.time() - 120)
    flash = rig.flash_for(tok, "late")
    res = rig.claim(flash)
    assert res.returncode == 3 and "(expired)" in res.stdout, res.stdout
    assert rig.responder.counters.get(T.EXPIRED) == 1
    s = rig.store()
    try:
        assert s.list_devices() == []
    finally:
        s.close()


def test_forged_and_unknown_tokens_get_no_answer_and_are_counted(rig: Rig) -> None:
    (tok,) = rig.issue()
    forged = T.IssuedToken(tok.id, tok.site, tok.zone, tok.kind, tok.expires, os.urandom(16))
    unknown = T.IssuedToken("0" * 16, "porto", "ribeira", "ap", tok.expires, os.urandom(16))
    for name, t in (("forged", forged), ("unknown", unknown)):
        # no answer ever comes: the board gives up after claim.wait_ms (8 s on a real board)
        res = rig.claim(rig.flash_for(t, name, wait_ms=1000), attempts=1)
        assert res.returncode == 3 and "no answer" in res.stdout, res.stdout
    # the responder counts each request when it sees it, which may be after the board gave up
    counted = rig.responder.counters
    assert wait_for(lambda: counted.get(T.FORGED) == 1 and counted.get(T.UNKNOWN) == 1, 10)
    assert rig.responder.counters.get(T.FORGED) == 1
    assert rig.responder.counters.get(T.UNKNOWN) == 1
    s = rig.store()
    try:
        rec = T.TokenStore(s, rig.master).get(tok.id)
        assert rec is not None and rec.used_at is None  # the real token is still claimable
    finally:
        s.close()
    # and the real bundle still works afterwards
    assert rig.claim(rig.flash_for(tok, "real")).returncode == 0


def test_bootstrap_account_is_confined(rig: Rig) -> None:
    """The shared claim account can ask and listen for answers, nothing else."""
    p = Peer(rig.broker.port, CLAIM_USER, CLAIM_PW)
    assert p.connect() == 0
    try:
        assert p.subscribe("idu/1/#")[0] >= 0x80
        assert p.subscribe(wire.ROOT + "+/req")[0] >= 0x80
        assert p.subscribe(wire.ROOT + "+/resp")[0] < 0x80
    finally:
        p.close()


def test_agent_boot_path_claims_then_reports(rig: Rig) -> None:
    """firmware/main.py on a claim bundle: the claim hook runs first, then the agent starts
    with the received identity, in the agent tests' heap, from the compiled firmware."""
    from tests.firmware.harness import Agent

    (tok,) = rig.issue()
    flash = rig.flash_for(tok, "bootpath")
    device = T.device_id_for("ribeira", tok.id)
    obs = Peer(rig.broker.port, CTL, CTL_PW)
    assert obs.connect() == 0
    obs.subscribe(f"idu/1/porto/{device}/#")
    agent = Agent(flash).start()
    try:
        got: list[tuple[str, bytes]] = []

        def reports() -> bool:
            while not obs.messages.empty():
                got.append(obs.messages.get())
            return sum(1 for t, _ in got if t.endswith("/rep")) >= 2

        assert wait_for(reports, 40), agent.console()
        s = rig.store()
        try:
            key = registry.device_key(s, rig.master, device)
        finally:
            s.close()
        for t, p in got:
            if topics.is_death_clear(t, p):
                continue
            decode(p, t, Signer(key))  # every message verifies with the registry's key
        assert "claim" not in _config(flash)
    finally:
        agent.kill()
        obs.close()


@pytest.mark.parametrize("right_ca", [True, False])
def test_claim_over_tls_verifying_the_project_ca(tmp_path: Path, mpy: Path, right_ca: bool) -> None:
    """The bootstrap connection over the broker's TLS listener, the board verifying the project
    CA (DER, what MicroPython loads) and the host name: what closes the controller-impersonation
    gap of docs/PROVISIONING.md's threat model."""
    from controller.security import ca
    from controller.security.broker_config import TlsListener
    from tests.support.broker import free_port

    cadir = tmp_path / "ca"
    ca.init_ca(cadir)
    ca.issue_server(cadir, ["localhost", "127.0.0.1"])
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", ADMIN, ADMIN_PW)
    tls = TlsListener(
        free_port(), cadir / "ca.crt", cadir / "server.crt", cadir / "server.key", "127.0.0.1"
    )
    b = GeneratedBroker(
        tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn, tls=tls)
    )
    b.start()
    store = SqliteStore(tmp_path / "idu.sqlite")
    store.migrate()
    master = MasterKey(os.urandom(32))
    try:
        with dynsec.DynsecClient("127.0.0.1", b.port, ADMIN, ADMIN_PW) as admin:
            admin.create_controller(CTL, CTL_PW)
            admin.run(bootstrap_commands(CLAIM_PW, CTL))
            (tok,) = T.TokenStore(store, master).issue("porto", "ribeira", "sensor", 1, 600)
            svc = ClaimService(
                ClaimResponder(store, master, admin), "127.0.0.1", b.port, CTL, CTL_PW
            ).start()
            try:
                if not right_ca:
                    ca.init_ca(tmp_path / "other")
                (tmp_path / "ca.der").write_bytes(
                    ca.ca_der(cadir if right_ca else tmp_path / "other")
                )
                broker = broker_block(
                    "localhost", tls.port, CLAIM_USER, CLAIM_PW, True, str(tmp_path / "ca.der")
                )
                flash = tmp_path / "tlsboard"
                flash.mkdir()
                write_bundle(flash / "config.json", claim_bundle(tok, broker))
                script = tmp_path / "claim_tls.py"
                script.write_text(
                    f"import claim\nprint('RESULT', claim.ensure({str(flash)!r}, 2, 200))\n"
                )
                res = run_upy(script, heap=UPY_HEAP, path=[mpy], timeout=60)
            finally:
                svc.stop()
    finally:
        store.close()
        b.stop()
    if not right_ca:  # the board never talks to a broker it cannot verify
        assert "RESULT" not in res.stdout and "attempt 1 failed" in res.stdout, res.stdout
        assert "claim" in _config(flash)
        return
    assert "RESULT True" in res.stdout, res.stdout + res.stderr
    cfg = _config(flash)
    broker_cfg = cfg["broker"]
    assert isinstance(broker_cfg, dict) and broker_cfg["tls"] is True and cfg["kind"] == "sensor"
