"""What keeps the agent's heap small stays true: the device loads only the protocol modules it
uses, the firmware's private const() copies of wire numbers match protocol.messages, and the
device's table-free downlink opener decides exactly like protocol.envelope.decode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import messages as M
from protocol import topics
from protocol.downlink import open_downlink
from protocol.envelope import Message, decode, encode
from protocol.errors import ProtocolError
from protocol.sign import Signer
from tests.support.upy import ROOT, run_upy
from tools.firmware_build import build

FIRMWARE = ROOT / "firmware"
KEY = bytes(range(32))
SIGNER = Signer(KEY)


def test_firmware_consts_match_messages() -> None:
    checked = 0
    for path in sorted(FIRMWARE.glob("*.py")):
        for name, value in re.findall(
            r"^_([A-Z][A-Z0-9_]*) = const\((-?\d+)\)", path.read_text(), re.M
        ):
            if hasattr(M, name):
                assert getattr(M, name) == int(value), f"{path.name}: _{name}"
                checked += 1
    assert checked >= 40  # agent.py and cmds.py carry their wire numbers this way


def test_message_tables_name_the_topic_channels() -> None:
    assert set(M.CHANNEL.values()) <= set(topics.CHANNELS)
    assert set(M.MAX_PACKET) == set(topics.CHANNELS)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        m = fn(*args)
    except ProtocolError as e:
        return e.code
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
