"""Test-vector semantics shared by both interpreters: the JSON form of a message and how one
vector is checked. Vector files live in tests/vectors/*.json (docs/PROTOCOL.md, "Test vectors").

JSON form: maps with integer keys become objects with decimal-string keys; binary becomes
{"$bin": "<hex>"} (unambiguous, since protocol maps never have string keys).
"""

from protocol import messages as M
from protocol import topics
from protocol.commands import CommandGuard
from protocol.envelope import Message, decode, encode
from protocol.errors import ProtocolError
from protocol.replay import ReplayWindow
from protocol.sign import Signer


def value_to_json(v: object) -> object:
    if isinstance(v, (bytes, bytearray)):
        return {"$bin": bytes(v).hex()}
    if isinstance(v, dict):
        return {str(k): value_to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [value_to_json(x) for x in v]
    return v


def value_from_json(v: object) -> object:
    if isinstance(v, dict):
        if "$bin" in v:
            return bytes.fromhex(v["$bin"])
        return {int(k): value_from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [value_from_json(x) for x in v]
    return v


def to_json(m: Message) -> dict:  # type: ignore[type-arg]
    return {
        "v": m.v,
        "type": M.NAMES[m.type],
        "epoch": m.epoch,
        "seq": m.seq,
        "ts": m.ts,
        "up": m.up,
        "body": value_to_json(m.body),
    }


def from_json(d: dict) -> Message:  # type: ignore[type-arg]
    return Message(
        M.BY_NAME[d["type"]],
        d["epoch"],
        d["seq"],
        value_from_json(d["body"]),
        d.get("ts"),
        d.get("up"),
        d.get("v", 1),
    )


def check(vec: dict) -> dict:  # type: ignore[type-arg]
    """Run one vector and return {"fields": ...} or {"error": code}, to compare with the file.

    Optional vector state (docs/PROTOCOL.md section 12): "seen", a list of [epoch, seq] already
    accepted, by the controller's replay window for an uplink message or by the device's command
    guard for a COMMAND (CONFIG and OTA vectors carry none: a device judges those by ts, section
    7); "now", the device's unix time (commands). A valid vector's fields must also re-encode to
    exactly payload_hex."""
    topic = vec["topic"]
    payload = bytes.fromhex(vec["payload_hex"])
    try:
        topics.parse(topic)
        signer = Signer(bytes.fromhex(vec["key_hex"]))
        msg = decode(payload, topic, signer)
        seen = vec.get("seen", [])
        if msg.type == M.COMMAND:
            guard = CommandGuard()
            for e, s in seen:
                guard.seen[(e, s)] = 0xFFFFFFFF
            guard.accept(msg, vec.get("now"))
        elif msg.type < M.COMMAND:  # uplink
            win = ReplayWindow()
            for e, s in seen:
                win.accept(e, s)
            win.accept(msg.epoch, msg.seq)
    except ProtocolError as e:
        return {"error": e.code}
    out: dict = {"fields": to_json(msg)}  # type: ignore[type-arg]
    try:
        if encode(signer, topic, from_json(out["fields"])) != payload:
            out["reencode"] = "differs"
    except ProtocolError as e:
        out["reencode"] = "error " + e.code
    return out
