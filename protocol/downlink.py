"""Device side: open one downlink message (cmd, cfg, ota) without protocol.envelope's tables.

A device opens a downlink message a few times a day; loading envelope.py and messages.py for it
costs more heap than its whole report path (on a device, module code and every interned name are
RAM). This is the same decision as `protocol.envelope.decode(payload, topic, signer)` for the three
downlink channels, in the same order and with the same error codes (tests check the two agree),
written with literal wire numbers. Refusals carry the code only, no detail text: a device reports
codes, and every message string would be heap while a command is read (about 1 KiB here).
Imports codec, errors, sealing and sign only."""

from protocol.codec import Reader
from protocol.errors import (
    BAD_FIELD,
    BAD_TAG,
    TOO_BIG,
    TRAILING_BYTES,
    UNKNOWN_TYPE,
    UNKNOWN_VERSION,
    ProtocolError,
)
from protocol.sealing import TRAILER, TRAILER_LEN, VERSION
from protocol.sign import TAG_LEN, Signer

_U32 = 0xFFFFFFFF


class Downlink:
    """A verified downlink message: the fields CommandGuard.accept() and a device read."""

    def __init__(self, mtype: int, epoch: int, seq: int, ts: object, body: object) -> None:
        self.type = mtype
        self.epoch = epoch
        self.seq = seq
        self.ts = ts
        self.body = body


def _u32(v: object) -> bool:
    return type(v) is int and 0 <= v <= _U32


def open_downlink(payload: bytes, topic: bytes, channel: str, signer: Signer | None) -> Downlink:
    """Parse, check and (with a signer) verify a payload that arrived on `topic`, whose last
    segment is `channel` ("cmd", "cfg" or "ota"). Raises ProtocolError like envelope.decode."""
    n = len(payload)
    limit = 512 if channel == "cmd" else 1024 if channel == "cfg" else 2304  # MAX_PACKET
    if n > limit:
        raise ProtocolError(TOO_BIG)  # over the channel's limit
    r = Reader(payload)
    env = r.value()
    if r.pos != r.end:
        raise ProtocolError(TRAILING_BYTES)
    if not isinstance(env, dict):
        raise ProtocolError(BAD_FIELD)  # envelope is not a map
    v = env.get(0)  # K_VERSION
    if type(v) is not int:
        raise ProtocolError(BAD_FIELD)  # version missing or not an integer
    if v != VERSION:
        raise ProtocolError(UNKNOWN_VERSION)  # an envelope version this code does not speak
    for k in env:
        if not 0 <= k <= 7:
            raise ProtocolError(BAD_FIELD)  # an envelope key above 7
    mtype = env.get(1)
    epoch = env.get(2)
    seq = env.get(3)
    ts = env.get(4)
    up = env.get(5)
    if mtype is None or epoch is None or seq is None or 6 not in env:
        raise ProtocolError(BAD_FIELD)  # type, epoch, seq and body are required
    if type(mtype) is not int:
        raise ProtocolError(BAD_FIELD)  # type is an integer
    tag = env.get(7)
    if (
        not isinstance(tag, bytes)
        or len(tag) != TAG_LEN
        or bytes(payload[n - TRAILER_LEN : n - TAG_LEN]) != TRAILER
    ):
        raise ProtocolError(BAD_TAG)  # tag missing or not the last entry
    if signer is not None:
        signer.verify(topic, payload[: n - TRAILER_LEN], tag)
    if not 1 <= mtype <= 9:
        raise ProtocolError(UNKNOWN_TYPE)  # not a message type
    if not _u32(epoch) or not _u32(seq):
        raise ProtocolError(BAD_FIELD)  # epoch and seq are 0..2**32-1
    if ts is not None and not _u32(ts):
        raise ProtocolError(BAD_FIELD)  # ts is unix seconds 0..2**32-1
    if up is not None and not _u32(up):
        raise ProtocolError(BAD_FIELD)  # up is seconds 0..2**32-1
    if mtype != (7 if channel == "cmd" else 8 if channel == "cfg" else 9):
        raise ProtocolError(UNKNOWN_TYPE)  # a type not allowed on this channel
    body = env[6]
    if not isinstance(body, dict):
        raise ProtocolError(BAD_FIELD)  # body is a map
    # COMMAND: op and expiry; OTA: phase; CONFIG: any map
    for key in (0, 1) if mtype == 7 else (0,) if mtype == 9 else ():
        if type(body.get(key)) is not int:
            raise ProtocolError(BAD_FIELD)  # a required body field missing or mistyped
    return Downlink(mtype, epoch, seq, ts, body)
