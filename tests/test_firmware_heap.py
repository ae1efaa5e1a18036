"""What keeps the agent's heap small stays true: each phase of the real agent leaves loaded only
what the next one needs (firmware/heap.py), the device loads only the protocol modules it uses,
the firmware's private const() copies of wire numbers match protocol.messages, and the device's
table-free downlink opener decides exactly like protocol.envelope.decode."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

from protocol import messages as M
from protocol import topics
from protocol.confirm import check as confirm_check
from protocol.downlink import open_downlink
from protocol.envelope import Message, decode, encode
from protocol.errors import ProtocolError
from protocol.sign import Signer
from tests.firmware.harness import Agent, Observer, make_flash, ring_count
from tests.support.broker import Broker, free_port
from tests.support.upy import ROOT, run_upy
from tools.firmware_build import build

FIRMWARE = ROOT / "firmware"
KEY = bytes(range(32))
SIGNER = Signer(KEY)


def _consts() -> list[tuple[str, str, int]]:
    """(module file, name, value) of every decimal `NAME = const(n)` in firmware/*.py."""
    out = []
    for path in sorted(FIRMWARE.glob("*.py")):
        for name, value in re.findall(
            r"^(_?[A-Z][A-Z0-9_]*) = const\((-?\d+)\)", path.read_text(), re.M
        ):
            out.append((path.name, name, int(value)))
    return out


def test_firmware_consts_match_messages() -> None:
    checked = 0
    for module, name, value in _consts():
        if name.startswith("_") and hasattr(M, name[1:]):
            assert getattr(M, name[1:]) == value, f"{module}: {name}"
            checked += 1
    assert checked >= 60  # agent.py, cmds.py, inbox.py and the boards carry wire numbers so


def test_firmware_private_copies_match_the_public_const() -> None:
    """A number one firmware module owns (agent.REBOOT) and another copies as a private const()
    (cmds._REBOOT, to not import agent): the copy must say the same."""
    public = {name: (module, value) for module, name, value in _consts() if name[0] != "_"}
    checked = 0
    for module, name, value in _consts():
        if name.startswith("_") and name[1:] in public:
            owner, want = public[name[1:]]
            assert value == want, f"{module}: {name} = {value}, but {owner} says {want}"
            checked += 1
    assert checked >= 1


def test_message_tables_name_the_topic_channels() -> None:
    assert set(M.CHANNEL.values()) <= set(topics.CHANNELS)
    assert set(M.MAX_PACKET) == set(topics.CHANNELS)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        m = fn(*args)
    except ProtocolError as e:
        return e.code
    if isinstance(m, tuple) and m[0] == M.CONFIRM:  # the device checks the ranges itself, next
        return confirm_check(m[4]) or m
    return m if isinstance(m, (tuple, str)) else (m.type, m.epoch, m.seq, m.ts, m.body)


def _cases() -> list[tuple[str, bytes]]:
    base = [
        ("cmd", Message(M.COMMAND, 3, 9, {M.C_OP: M.OP_PING, M.C_EXPIRES: 1_900_000_000}, ts=5)),
        ("cmd", Message(M.COMMAND, 3, 10, {M.C_OP: 3, M.C_EXPIRES: 7, M.C_ARGS: {0: 30}})),
        ("cfg", Message(M.CONFIG, 1, 2, {M.G_INTERVAL: 60, M.G_DEADBANDS: {16: 2}}, ts=9)),
        ("ota", Message(M.OTA, 1, 3, {M.O_PHASE: 1, M.O_VERSION: "x"}, ts=9, up=4)),
        ("cmd", Message(M.CONFIG, 1, 2, {}, ts=9)),  # a type on the wrong channel
        ("cmd", Message(M.COMMAND, 1, 2, {M.C_OP: True, M.C_EXPIRES: 1}, ts=9)),
        ("ota", Message(M.OTA, 1, 2, {M.O_VERSION: "x"}, ts=9)),
        ("cfg", Message(M.CONFIG, 1, 2, [1, 2], ts=9)),  # type: ignore[arg-type]
        ("cmd", Message(M.CONFIRM, 3, 11, {M.F_RANGES: [4, 70000, 3, 5, 1, 2]}, ts=9)),
        ("cmd", Message(M.CONFIRM, 3, 12, {M.F_RANGES: [4, 9, 2, 4, 10, 1]}, ts=9)),  # overlap
        ("cfg", Message(M.CONFIRM, 3, 13, {M.F_RANGES: [4, 9, 2]}, ts=9)),  # not on cfg
    ]
    out = []
    for channel, msg in base:
        topic = f"idu/1/porto/ap-1/{channel}"
        p = encode(SIGNER, topic, msg)
        out.append((channel, p))
        for i in range(len(p)):
            out.append((channel, p[:i]))
            for flip in (0x01, 0x80, 0xFF):
                out.append((channel, p[:i] + bytes([p[i] ^ flip]) + p[i + 1 :]))
        out.append((channel, p + b"\x00"))
    out.append(("cmd", b"\x80" * 600))
    return out


@pytest.mark.parametrize("signed", [True, False])
def test_open_downlink_decides_like_envelope_decode(signed: bool) -> None:
    signer = SIGNER if signed else None
    kinds = set()
    for channel, payload in _cases():
        topic = f"idu/1/porto/ap-1/{channel}"
        want = _outcome(decode, payload, topic, signer)
        got = _outcome(open_downlink, payload, topic.encode(), channel, signer)
        assert got == want, (channel, payload.hex())
        kinds.add(want if isinstance(want, str) else "ok")
    assert {"ok", "bad_tag", "truncated", "unknown_type", "bad_field"} <= kinds or not signed


def test_device_loads_only_the_protocol_it_uses() -> None:
    """The agent's resident modules and a command's, in the real interpreter from .mpy."""
    mpy = build()
    script = (
        "import sys\n"
        "import protocol.codec\n"  # as startup.py does, and then unloads
        "del sys.modules['protocol.codec'], sys.modules['protocol.reader']\n"
        "import protocol\n"
        "del protocol.codec, protocol.reader\n"
        "import agent\n"
        "print(sorted(m for m in sys.modules if m.startswith('protocol')))\n"
        "import inbox, cmds, protocol.downlink, protocol.commands\n"  # what a command loads
        "print(sorted(m for m in sys.modules if m.startswith('protocol')))\n"
    )
    res = run_upy(script, heap="256K", path=[mpy, Path(".frozen")]).check()
    resident, with_cmds = res.stdout.splitlines()[-2:]
    assert eval(resident) == [
        "protocol",
        "protocol.compat",
        "protocol.sealing",
        "protocol.sign",
        "protocol.writer",
    ]  # not protocol.errors: the report path imports it only when something is refused
    for name in ("protocol.envelope", "protocol.messages", "protocol.topics"):
        assert name not in with_cmds
    # a command reads with protocol.reader alone, and refuses with codes, not exceptions
    assert "protocol.codec" not in with_cmds and "protocol.errors" not in with_cmds


# What each phase of the agent leaves in sys.modules (besides the test's own "main" wrapper).
# Boot leaves the board and the writer (the config hash) for the agent; the agent adds its own
# modules, asyncio and the signing path; a command's modules go with its ack; a soft reboot
# returns to what main.py started with.
AFTER_BOOT = {"heap", "protocol", "protocol.writer", "backoff", "board_sim"}
STEADY = AFTER_BOOT | {
    "agent",
    "link",
    "mqtt_codec",
    "ring",
    "asyncio",
    "asyncio.core",
    "protocol.compat",
    "protocol.sealing",
    "protocol.sign",
}
AFTER_PHASE = {
    "BOOT": AFTER_BOOT,
    "DECODER": STEADY,  # in the agent; boot's own DECODER is checked by the group rule only
    "ADMIT": STEADY | {"cmds"},
    "SETTINGS": STEADY | {"cmds"},
    "DECODER,COMMAND": STEADY,
    "RECORD": STEADY,
    "AGENT,board_sim": {"heap", "protocol"},
}


def _phases(console: str) -> list[tuple[str, set[str]]]:
    out = []
    for line in console.splitlines():
        if line.startswith("idu-phase "):
            _, groups, modules = line.split(" ", 2)
            out.append((groups, set(eval(modules)) - {"main"}))
    return out


def test_every_phase_unloads_what_it_loaded(broker: Broker, tmp_path: Path) -> None:
    """The real agent (tests/firmware/phases.py wraps heap.unload to print sys.modules after each
    call) boots, answers a ping, a set_config, a diagnostics, a malformed and a forged command,
    applies CONFIRMs, then a reboot, and boots again: after every unload() the groups it named
    are gone and the modules left are exactly the phase's set above."""
    table = runpy.run_path(str(FIRMWARE / "heap.py"))["_GROUPS"]  # plain Python: runs here too
    groups_of = {ln.split()[0]: ln.split()[1:] for ln in table.strip().splitlines()}
    obs = Observer(broker.port, confirm_every=0.2, confirming=False).start()
    # reports made before the observer starts confirming are re-sent after confirm_ms, then
    # confirmed: 2 s keeps the wait short whichever of them were in flight at that moment
    flash = make_flash(tmp_path, "ap-ph", broker.port, confirm_ms=2000)
    agent = Agent(flash, heap="256K", entry=ROOT / "tests" / "firmware" / "phases.py").start()
    try:
        obs.wait(lambda: obs.items("ap-ph", "birth"), 20, "birth")
        for op, args in (
            (M.OP_PING, None),
            (M.OP_SET_CONFIG, {M.G_INTERVAL: 2}),
            (M.OP_DIAGNOSTICS, None),
        ):
            _, seq, _ = obs.command("ap-ph", op, args)
            assert obs.ack_for("ap-ph", seq).body[M.A_RESULT] == M.R_OK  # type: ignore[index]
        obs.publish_raw("idu/1/porto/ap-ph/cmd", b"\x93\x01\x02")  # not an envelope
        _, seq, _ = obs.command("ap-ph", M.OP_PING, key=bytes(32))  # forged
        assert obs.ack_for("ap-ph", seq).body[M.A_RESULT] == M.R_BAD_TAG  # type: ignore[index]
        obs.confirming = True  # now CONFIRMs (inbox.py, then settle.py after the decoder left)
        obs.wait(lambda: len(obs.confirms) >= 3 and ring_count(flash) <= 1, 20, "confirmed")
        obs.confirming = False
        _, seq, _ = obs.command("ap-ph", M.OP_REBOOT)
        obs.ack_for("ap-ph", seq)
        obs.wait(
            lambda: sum(g == "BOOT" for g, _ in _phases(agent.console())) >= 2,
            20,
            "the second boot",
        )
    finally:
        agent.kill()
        obs.stop()
    phases = _phases(agent.console())
    seen = [g for g, _ in phases]
    assert seen.count("BOOT") == 2 and "AGENT,board_sim" in seen, seen
    assert {"ADMIT", "SETTINGS", "DECODER,COMMAND", "RECORD"} <= set(seen), seen
    for i, (groups, modules) in enumerate(phases):
        for name in groups.split(","):
            for mod in groups_of.get(name, [name]):
                assert mod not in modules and "protocol." + mod not in modules, (i, groups, mod)
        in_boot = groups == "DECODER" and "startup" in modules  # startup.py drops the decoder
        if not in_boot:
            assert modules == AFTER_PHASE[groups], (i, groups, sorted(modules))


CLAIM_SCRIPT = """
import sys
import heap

unload = heap.unload


def watched(*groups):
    unload(*groups)
    print("idu-phase", sorted(sys.modules))


heap.unload = watched
import claim

try:
    claim.ensure(sys.argv[1], 1, 10)
except claim.ClaimFailed as e:
    print("FAILED", e)
"""


def test_claim_step_unloads_what_it_loaded(tmp_path: Path) -> None:
    """A board with a claim bundle whose broker is unreachable: claim.ensure gives up, and its
    heap.py CLAIM leaves only what main.py started with, so boot then starts as on any board."""
    mpy = build()
    flash = tmp_path / "board"
    flash.mkdir()
    port = free_port()  # nothing listens there
    broker = {"host": "127.0.0.1", "port": port, "username": "claim", "password": "x"}
    claim = {"id": "0123456789abcdef", "secret": "00" * 16, "wait_ms": 200}
    (flash / "config.json").write_text(json.dumps({"kind": "ap", "claim": claim, "broker": broker}))
    script = tmp_path / "claim_phase.py"  # a file: `-c` text costs heap too
    script.write_text(CLAIM_SCRIPT)
    res = run_upy(script, str(flash), heap="256K", path=[mpy, Path(".frozen")]).check()
    assert "FAILED no answer" in res.stdout, res.stdout
    phases = [ln for ln in res.stdout.splitlines() if ln.startswith("idu-phase ")]
    assert len(phases) == 1 and set(eval(phases[0].split(" ", 1)[1])) == {"heap", "protocol"}
