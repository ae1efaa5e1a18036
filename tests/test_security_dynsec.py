"""Broker accounts and ACLs through the dynamic security plugin, against a real Mosquitto whose
config and initial dynsec file are the generated ones."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import CONNECT_FAILED, DynsecCommandError, SecurityError
from controller.security import dynsec
from controller.security.broker_config import BrokerSettings, write_password_file
from controller.security.broker_stats import SYS_STATS
from protocol import topics
from protocol.topics import topic
from tests.support.secure_broker import GeneratedBroker, Peer

ADMIN, ADMIN_PW = "admin", dynsec.new_password()
CTL, CTL_PW = "controller", dynsec.new_password()
SITE = "porto"
NOT_AUTHORIZED_V311 = 5  # CONNACK "not authorised"; paho maps it to its v5 code 135
REFUSED = (5, 0x86, 0x87)


@pytest.fixture
def sec(tmp_path: Path) -> Iterator[GeneratedBroker]:
    dyn_file = dynsec.write_initial_file(tmp_path / "dynsec.json", ADMIN, ADMIN_PW)
    b = GeneratedBroker(
        tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn_file)
    )
    b.start()
    with dynsec.DynsecClient("127.0.0.1", b.port, ADMIN, ADMIN_PW) as admin:
        admin.create_controller(CTL, CTL_PW)
        admin.create_devices([(SITE, "ap-a", "pw-a"), (SITE, "ap-b", "pw-b")])
    yield b
    b.stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def connect(b: GeneratedBroker, peers: list[Peer], user: str | None, pw: str | None) -> Peer:
    p = Peer(b.port, user, pw)
    peers.append(p)
    assert p.connect() == 0, f"{user} refused"
    return p


def test_initial_document_hash_matches_mosquitto_ctrl(tmp_path: Path) -> None:
    """Our PBKDF2 form is the plugin's: recompute mosquitto_ctrl's own hash from its salt."""
    ctrl = shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl"
    out = tmp_path / "ref.json"
    subprocess.run(
        [ctrl, "dynsec", "init", str(out), "admin", "pw1"],
        check=True,
        timeout=30,
        capture_output=True,
    )
    ref = json.loads(out.read_text())["clients"][0]
    import base64

    mine = dynsec.hash_password("pw1", base64.b64decode(ref["salt"]))
    assert mine == {k: ref[k] for k in ("password", "salt", "iterations")}
    path = dynsec.write_initial_file(tmp_path / "d" / "dynsec.json", "admin", "Plain-Secret-42")
    assert os.stat(path).st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert not any(doc["defaultACLAccess"][k] for k in ("publishClientSend", "subscribe"))
    assert "Plain-Secret-42" not in path.read_text()


def test_anonymous_and_wrong_password_refused(sec: GeneratedBroker, peers: list[Peer]) -> None:
    for user, pw in [(None, None), ("ap-a", "wrong"), ("nobody", "pw-a")]:
        p = Peer(sec.port, user, pw)
        peers.append(p)
        assert p.connect() in REFUSED
    with pytest.raises(SecurityError) as e:
        dynsec.DynsecClient("127.0.0.1", sec.port, ADMIN, "wrong", timeout=3).connect()
    assert e.value.code == CONNECT_FAILED
    with pytest.raises(SecurityError, match="log in with the admin account") as e:
        dynsec.DynsecClient("127.0.0.1", sec.port, CTL, CTL_PW, timeout=3).connect()
    assert e.value.code == CONNECT_FAILED


def test_device_cannot_publish_as_another(sec: GeneratedBroker, peers: list[Peer]) -> None:
    ctl = connect(sec, peers, CTL, CTL_PW)
    assert ctl.subscribe("idu/#") == [1]
    a = connect(sec, peers, "ap-a", "pw-a")
    for ch in ("rep", "birth", "death", "evt", "ack"):
        a.publish(topic(SITE, "ap-b", ch), b"forged-" + ch.encode())
    for ch in ("cmd", "cfg", "ota"):  # not even downlink to itself
        a.publish(topic(SITE, "ap-a", ch), b"self-" + ch.encode())
    a.publish("idu/1/porto/ap-a/rep/extra", b"deeper")
    evil = {"commands": [{"command": "createClient", "username": "evil", "password": "x"}]}
    a.publish(dynsec.CONTROL_TOPIC, json.dumps(evil).encode())
    a.publish(topic(SITE, "ap-a", "rep"), b"marker")
    got = ctl.take_until(b"marker")
    assert got == [(topic(SITE, "ap-a", "rep"), b"marker")]
    with dynsec.DynsecClient("127.0.0.1", sec.port, ADMIN, ADMIN_PW) as admin:
        assert "evil" not in admin.list_clients()


def test_device_cannot_read_others_commands(sec: GeneratedBroker, peers: list[Peer]) -> None:
    a = connect(sec, peers, "ap-a", "pw-a")
    bad_filters = (topic(SITE, "ap-b", "cmd"), "#", "idu/#", "idu/1/+/+/cmd", "$SYS/#")
    for bad in (*bad_filters, dynsec.RESPONSE_TOPIC, "$share/g/idu/#"):
        assert a.subscribe(bad) == [0x80], bad  # v3.1.1 SUBACK failure
    assert a.subscribe(topic(SITE, "ap-a", "cmd")) == [1]
    assert a.subscribe(topic(SITE, "ap-a", "cfg")) == [1]
    ctl = connect(sec, peers, CTL, CTL_PW)
    ctl.publish(topic(SITE, "ap-b", "cmd"), b"for-b")
    ctl.publish(topic(SITE, "ap-b", "cfg"), b"for-b-cfg")
    ctl.publish(topic(SITE, "ap-a", "cmd"), b"marker")
    assert a.take_until(b"marker") == [(topic(SITE, "ap-a", "cmd"), b"marker")]


def test_controller_shared_subscription(sec: GeneratedBroker, peers: list[Peer]) -> None:
    ctl = connect(sec, peers, CTL, CTL_PW)
    assert ctl.subscribe("$share/ingest/idu/1/+/+/rep") == [1]
    a = connect(sec, peers, "ap-a", "pw-a")
    a.publish(topic(SITE, "ap-a", "rep"), b"marker")
    assert ctl.take_until(b"marker")[-1] == (topic(SITE, "ap-a", "rep"), b"marker")


def test_controller_reads_the_broker_stats_it_watches_and_no_other_sys(
    sec: GeneratedBroker, peers: list[Peer]
) -> None:
    """controller_acls grants exactly broker_stats.SYS_STATS of $SYS ($SYS values are retained,
    so the current one arrives at once); a device gets none of it."""
    ctl = connect(sec, peers, CTL, CTL_PW)
    dropped = "$SYS/broker/publish/messages/dropped"
    assert dropped in SYS_STATS and ctl.subscribe(dropped, qos=0) == [0]
    topic_got, value = ctl.messages.get(timeout=15)  # generated configs: sys_interval 10
    assert topic_got == dropped and int(value) >= 0
    sub_failed = 0x80  # MQTT 3.1.1 SUBACK "failure"
    assert ctl.subscribe("$SYS/broker/clients/connected", qos=0) == [sub_failed]
    dev = connect(sec, peers, "ap-a", "pw-a")
    assert dev.subscribe(dropped, qos=0) == [sub_failed]


def test_disable_kicks_and_blocks_then_enable(sec: GeneratedBroker, peers: list[Peer]) -> None:
    a = connect(sec, peers, "ap-a", "pw-a")
    with dynsec.DynsecClient("127.0.0.1", sec.port, ADMIN, ADMIN_PW) as admin:
        t0 = time.monotonic()
        admin.disable_client("ap-a")
        deadline = t0 + 5
        while a.disconnected_at is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert a.disconnected_at is not None, "disabled device still connected after 5 s"
        kick_ms = (a.disconnected_at - t0) * 1000
        print(f"disableClient -> device disconnect: {kick_ms:.1f} ms")
        assert kick_ms < 1000
        a.close()
        again = Peer(sec.port, "ap-a", "pw-a")
        peers.append(again)
        assert again.connect() in REFUSED
        again.close()
        admin.enable_client("ap-a")
    back = Peer(sec.port, "ap-a", "pw-a")
    peers.append(back)
    assert back.connect() == 0


def test_delete_revokes_and_new_device_joins_without_restart(
    sec: GeneratedBroker, peers: list[Peer]
) -> None:
    assert sec.proc is not None
    pid = sec.proc.pid
    b = connect(sec, peers, "ap-b", "pw-b")
    with dynsec.DynsecClient("127.0.0.1", sec.port, ADMIN, ADMIN_PW) as admin:
        admin.delete_device(SITE, "ap-b")
        admin.create_device(SITE, "sn-new", "pw-new")
        assert "sn-new" in admin.list_clients() and "ap-b" not in admin.list_clients()
        with pytest.raises(DynsecCommandError) as e:
            admin.create_device(SITE, "sn-new", "again")  # duplicate: a clear failure
        assert {cmd for cmd, _ in e.value.failures} == {"createRole", "createClient"}
    deadline = time.monotonic() + 5
    while b.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert b.disconnected_at is not None
    gone = Peer(sec.port, "ap-b", "pw-b")
    peers.append(gone)
    assert gone.connect() in REFUSED
    ctl = connect(sec, peers, CTL, CTL_PW)
    ctl.subscribe("idu/1/+/+/rep")
    new = connect(sec, peers, "sn-new", "pw-new")
    new.publish(topic(SITE, "sn-new", "rep"), b"hello")
    assert ctl.take_until(b"hello") == [(topic(SITE, "sn-new", "rep"), b"hello")]
    assert sec.proc is not None and sec.proc.pid == pid


def test_password_change_and_persistence_across_restart(
    sec: GeneratedBroker, peers: list[Peer]
) -> None:
    with dynsec.DynsecClient("127.0.0.1", sec.port, ADMIN, ADMIN_PW) as admin:
        admin.set_client_password("ap-a", "pw-a2")
        assert admin.get_client("ap-a")["roles"] == [{"rolename": "idu-device/porto/ap-a"}]
        admin.add_client_role("ap-a", dynsec.device_role(SITE, "ap-b"))
        roles = {r["rolename"] for r in admin.get_client("ap-a")["roles"]}
        assert roles == {"idu-device/porto/ap-a", "idu-device/porto/ap-b"}
    sec.restart()
    old = Peer(sec.port, "ap-a", "pw-a")
    peers.append(old)
    assert old.connect() in REFUSED
    connect(sec, peers, "ap-a", "pw-a2")


def test_bad_names_refused_before_the_broker() -> None:
    for site, dev in [("Porto", "a"), ("porto", "a/b"), ("porto", "#"), ("porto", "")]:
        with pytest.raises(SecurityError):
            dynsec.create_device_commands(site, dev, "pw")


def static_acl(controller_user: str, admin_users: tuple[str, ...] = ()) -> str:
    """The static fallback's acl_file (docs/SECURITY.md; a deployment writes it by hand):
    `pattern` lines pin every device (username = device id) to its own subtree under any
    site; the controller gets the whole tree. Mosquitto expands %u here (unlike dynsec role
    ACLs in 2.0.11). A device could publish as itself under another site id: the controller
    drops reports whose (site, device) the registry does not know."""
    out = [
        "# generated by idufleet: devices by pattern, controller by user",
        f"user {topics.check_id(controller_user, 'controller user')}",
        f"topic readwrite {topics.ROOT}/#",
        f"topic read $share/+/{topics.ROOT}/#",
    ]
    for admin in admin_users:
        out += [f"user {admin}", f"topic readwrite {topics.ROOT}/#"]
    out.append("")
    for ch in topics.UPLINK:
        out.append(f"pattern write {topics.PREFIX}+/%u/{ch}")
    for ch in topics.DOWNLINK:
        out.append(f"pattern read {topics.PREFIX}+/%u/{ch}")
    return "\n".join(out) + "\n"


def test_static_fallback_pattern_acl(tmp_path: Path, peers: list[Peer]) -> None:
    """password_file + acl_file with %u patterns: same isolation without the plugin."""
    pw = write_password_file(tmp_path / "passwd", {"ap-a": "pw-a", CTL: CTL_PW})
    assert os.stat(pw).st_mode & 0o777 == 0o600 and "pw-a" not in pw.read_text()
    acl = tmp_path / "acl"
    acl.write_text(static_acl(CTL))
    b = GeneratedBroker(
        tmp_path / "b",
        settings=BrokerSettings(data_dir=tmp_path, password_file=pw, acl_file=acl),
    )
    b.start()
    try:
        ctl = connect(b, peers, CTL, CTL_PW)  # type: ignore[arg-type]
        ctl.subscribe("idu/#")
        a = connect(b, peers, "ap-a", "pw-a")  # type: ignore[arg-type]
        a.publish(topic(SITE, "ap-b", "rep"), b"forged")
        a.publish(topic(SITE, "ap-a", "rep"), b"marker")
        assert ctl.take_until(b"marker") == [(topic(SITE, "ap-a", "rep"), b"marker")]
        ctl.publish(topic(SITE, "ap-b", "cmd"), b"for-b")
        a.subscribe("idu/1/+/+/cmd")  # accepted at SUBACK by the static ACL, filtered on delivery
        ctl.publish(topic(SITE, "ap-b", "cmd"), b"for-b-again")
        ctl.publish(topic(SITE, "ap-a", "cmd"), b"mine")
        assert a.take_until(b"mine") == [(topic(SITE, "ap-a", "cmd"), b"mine")]
        # accounts change by rewriting the file and SIGHUP: a new device, ap-a revoked
        write_password_file(pw, {"ap-c": "pw-c", CTL: CTL_PW})
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        rc = -1
        while rc != 0 and time.monotonic() < deadline:
            c = Peer(b.port, "ap-c", "pw-c")
            peers.append(c)
            rc = c.connect()
            time.sleep(0.05)
        assert rc == 0, "new account not active after SIGHUP"
        again = Peer(b.port, "ap-a", "pw-a")
        peers.append(again)
        assert again.connect() in REFUSED
        # Mosquitto 2.0 re-checks connected clients on reload: the revoked one is dropped
        deadline = time.monotonic() + 5
        while a.disconnected_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.disconnected_at is not None
    finally:
        b.stop()
