"""Device side: open one downlink message (cmd, cfg, ota) without protocol.envelope's tables.

A device opens a downlink message a few times a day; loading envelope.py and messages.py for it
costs more heap than its whole report path (on a device, module code and every interned name are
RAM). This is the same decision as `protocol.envelope.decode(payload, topic, signer)` for the three
downlink channels, in the same order and with the same error codes (tests check the two agree),
written with literal wire numbers. It returns a plain tuple (a class would be heap too), and a
refusal as its code rather than raising it: raising would load protocol.errors next to the
decoder at the worst moment (a forged command), and a device reports codes, not detail text.
Imports reader, compat, sealing and sign."""

from protocol.compat import compare_digest
from protocol.reader import Reader
from protocol.sealing import TRAILER, TRAILER_LEN, VERSION
from protocol.sign import TAG_LEN, Signer

_U32 = 0xFFFFFFFF


def _u32(v: object) -> bool:
    return type(v) is int and 0 <= v <= _U32


def open_downlink(
    payload: bytes, topic: bytes, channel: str, signer: Signer | None
) -> tuple[int, int, int, int | None, dict[int, object]] | str:
    """Parse, check and (with a signer) verify a payload that arrived on `topic`, whose last
    segment is `channel` ("cmd", "cfg" or "ota"): (type, epoch, seq, ts, body), the fields
    CommandGuard.admit() and a device reads (type 10, CONFIRM, also on "cmd"), or the code
    envelope.decode would raise. For a CONFIRM the last check, its ranges, is the caller's:
    protocol.confirm.check(body), run once this module and the reader are unloaded, so a
    device never holds the decoder and the confirmation code at once. Only the
    decoder raises (ProtocolError, for bytes that are not msgpack the protocol allows)."""
    n = len(payload)
    limit = 512 if channel == "cmd" else 1024 if channel == "cfg" else 2304  # MAX_PACKET
    if n > limit:
        return "too_big"  # over the channel's limit
    r = Reader(payload)
    env = r.value()
    if r.pos != r.end:
        return "trailing_bytes"
    if not isinstance(env, dict):
        return "bad_field"  # envelope is not a map
    v = env.get(0)  # K_VERSION
    if type(v) is not int:
        return "bad_field"  # version missing or not an integer
    if v != VERSION:
        return "unknown_version"  # an envelope version this code does not speak
    for k in env:
        if not 0 <= k <= 7:
            return "bad_field"  # an envelope key above 7
    mtype = env.get(1)
    epoch = env.get(2)
    seq = env.get(3)
    ts = env.get(4)
    up = env.get(5)
    if mtype is None or epoch is None or seq is None or 6 not in env:
        return "bad_field"  # type, epoch, seq and body are required
    if type(mtype) is not int:
        return "bad_field"  # type is an integer
    tag = env.get(7)
    if (
        not isinstance(tag, bytes)
        or len(tag) != TAG_LEN
        or bytes(payload[n - TRAILER_LEN : n - TAG_LEN]) != TRAILER
    ):
        return "bad_tag"  # tag missing or not the last entry
    if signer is not None and not compare_digest(
        signer.tag(topic, payload[: n - TRAILER_LEN]), tag
    ):
        return "bad_tag"  # Signer.verify's check, without raising
    if not 1 <= mtype <= 10:
        return "unknown_type"  # not a message type
    if not _u32(epoch) or not _u32(seq):
        return "bad_field"  # epoch and seq are 0..2**32-1
    if not _u32(ts):
        return "bad_field"  # ts is required on downlink, unix seconds 0..2**32-1
    if up is not None and not _u32(up):
        return "bad_field"  # up is seconds 0..2**32-1
    if mtype != (7 if channel == "cmd" else 8 if channel == "cfg" else 9) and not (
        mtype == 10 and channel == "cmd"
    ):
        return "unknown_type"  # a type not allowed on this channel (CONFIRM travels on cmd)
    body = env[6]
    if not isinstance(body, dict):
        return "bad_field"  # body is a map
    # COMMAND: op and expiry; OTA: phase; CONFIG: any map
    for key in (0, 1) if mtype == 7 else (0,) if mtype == 9 else ():
        if not _u32(body.get(key)):
            return "bad_field"  # a required body field missing or not a uint
    return mtype, epoch, seq, ts, body
