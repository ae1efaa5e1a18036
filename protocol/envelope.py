"""The signed msgpack envelope: build one, or open one (parse, check, verify). Pure logic.

Layout (docs/PROTOCOL.md, "Envelope"): one map with integer keys in ascending order, whose last
entry is the tag: key 7, bin8 of 16 bytes. The tag authenticates topic || 0x00 || every payload
byte before that last entry, so no re-encoding is needed to verify.
"""

from protocol import messages as M
from protocol.codec import Reader, Writer
from protocol.compat import fast_unpack
from protocol.confirm import check as confirm_check
from protocol.errors import (
    BAD_FIELD,
    BAD_TAG,
    TOO_BIG,
    TRAILING_BYTES,
    UNKNOWN_TYPE,
    UNKNOWN_VERSION,
    ProtocolError,
)
from protocol.sealing import TRAILER as TRAILER
from protocol.sealing import TRAILER_LEN as TRAILER_LEN
from protocol.sealing import VERSION as VERSION
from protocol.sealing import seal as seal
from protocol.sealing import write_head as write_head
from protocol.sign import TAG_LEN, Signer

# write_head and seal (the device's hot path) live in protocol.sealing and are re-exported here.
_U32 = 0xFFFFFFFF


class Message:
    """One decoded message. `ts` is unix seconds or None (sender has no clock); `up` is seconds
    since the sender booted or None. At least one of them is set on uplink messages."""

    def __init__(
        self,
        type: int,
        epoch: int,
        seq: int,
        body: object,
        ts: int | None = None,
        up: int | None = None,
        v: int = VERSION,
    ) -> None:
        self.v = v
        self.type = type
        self.epoch = epoch
        self.seq = seq
        self.ts = ts
        self.up = up
        self.body = body

    def key(self) -> tuple[int, int, int, int, int | None, int | None, object]:
        return (self.v, self.type, self.epoch, self.seq, self.ts, self.up, self.body)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self.key() == other.key()

    def __repr__(self) -> str:
        return "Message(%s, epoch=%d, seq=%d, ts=%r, up=%r, body=%r)" % (
            M.NAMES.get(self.type, self.type),
            self.epoch,
            self.seq,
            self.ts,
            self.up,
            self.body,
        )


def encode(signer: Signer, topic: str, msg: Message, limit: int = M.MAX_PACKET_ANY) -> bytes:
    """Signed payload for msg on topic. Raises ProtocolError if msg cannot be carried."""
    _check_fields(msg.type, msg.epoch, msg.seq, msg.ts, msg.up)
    w = Writer(bytearray(limit))
    write_head(w, msg.type, msg.epoch, msg.seq, msg.ts, msg.up)
    w.value(msg.body, 1)
    return bytes(w.mv[: seal(w, signer, topic.encode())])


def _uint(v: object, limit: int = _U32) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit


def _check_fields(mtype: object, epoch: object, seq: object, ts: object, up: object) -> None:
    if mtype not in M.NAMES:
        raise ProtocolError(UNKNOWN_TYPE, "message type %r" % (mtype,))
    if not _uint(epoch) or not _uint(seq):
        raise ProtocolError(BAD_FIELD, "epoch and seq are 0..2**32-1")
    if ts is not None and not _uint(ts):
        raise ProtocolError(BAD_FIELD, "ts is unix seconds 0..2**32-1")
    if up is not None and not _uint(up):
        raise ProtocolError(BAD_FIELD, "up is seconds 0..2**32-1")


def decode(
    payload: bytes, topic: str | None = None, signer: Signer | None = None, channel: str = ""
) -> Message:
    """Parse, check and (with a signer) verify one payload. Raises ProtocolError in this order:
    too_big, then structural errors (truncated, bad_type, too_deep, trailing_bytes, bad_field),
    unknown_version, bad_tag, unknown_type (type not allowed on the topic's channel), bad_field
    (body shape). `ts`/`up` present as section 5 requires: ts or up on uplink messages, ts on
    downlink ones (COMMAND and above). Replay and expiry are the caller's state
    (protocol.replay, protocol.commands).
    `channel` defaults to the topic's last segment."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(BAD_FIELD, "payload must be bytes")
    if topic is not None and not channel:
        channel = topic[topic.rfind("/") + 1 :]
    limit = M.MAX_PACKET.get(channel, M.MAX_PACKET_ANY)
    if len(payload) > limit:
        raise ProtocolError(TOO_BIG, "%d bytes, %s limit %d" % (len(payload), channel, limit))
    env = fast_unpack(payload) if fast_unpack is not None else None  # type: ignore[operator]
    if env is None:  # MicroPython, or the fast path declined: the pure codec names the error
        r = Reader(payload)
        env = r.value()
        if r.pos != r.end:
            raise ProtocolError(TRAILING_BYTES)
    if not isinstance(env, dict):
        raise ProtocolError(BAD_FIELD, "envelope is not a map")
    v = env.get(M.K_VERSION)
    if type(v) is not int:  # not isinstance: True == 1.0 == 1, and neither is a version
        raise ProtocolError(BAD_FIELD, "version missing or not an integer")
    if v != VERSION:
        raise ProtocolError(UNKNOWN_VERSION, "envelope version %d" % v)
    for k in env:
        if not 0 <= k <= M.K_TAG:
            raise ProtocolError(BAD_FIELD, "unknown envelope key %d" % k)
    mtype = env.get(M.K_TYPE)
    epoch = env.get(M.K_EPOCH)
    seq = env.get(M.K_SEQ)
    ts = env.get(M.K_TS)
    up = env.get(M.K_UP)
    if mtype is None or epoch is None or seq is None or M.K_BODY not in env:
        raise ProtocolError(BAD_FIELD, "type, epoch, seq and body are required")
    if not isinstance(mtype, int) or isinstance(mtype, bool):
        raise ProtocolError(BAD_FIELD, "type is an integer")
    tag = env.get(M.K_TAG)
    n = len(payload)
    if (
        not isinstance(tag, bytes)
        or len(tag) != TAG_LEN
        or bytes(payload[n - TRAILER_LEN : n - TAG_LEN]) != TRAILER
    ):
        raise ProtocolError(BAD_TAG, "tag missing or not the last entry")
    if signer is not None:
        if topic is None:
            raise ProtocolError(BAD_TAG, "verification needs the topic")
        signer.verify(topic.encode(), payload[: n - TRAILER_LEN], tag)
    _check_fields(mtype, epoch, seq, ts, up)
    if ts is None and (up is None or mtype >= M.COMMAND):
        raise ProtocolError(BAD_FIELD, "uplink carries ts or up, downlink carries ts")
    if channel and M.CHANNEL[mtype] != channel:
        raise ProtocolError(UNKNOWN_TYPE, "%s not allowed on %s" % (M.NAMES[mtype], channel))
    body = env[M.K_BODY]
    check_body(mtype, body)
    return Message(mtype, epoch, seq, body, ts, up)


# What the store can hold, per field (docs/PROTOCOL.md section 7, "Field types"). A metric
# integer is within +-(2**53 - 1): the store keeps physical values as IEEE-754 doubles, which hold
# every integer of that range exactly and no wider range (2**53 + 1 would come back as 2**53).
SAFE_INT = 0x1FFFFFFFFFFFFF
_U8 = 0xFF
_U16 = 0xFFFF


def _metrics(body: object) -> None:
    if type(body) is not dict:
        raise ProtocolError(BAD_FIELD, "metrics are a map")
    for k, val in body.items():
        t = type(val)
        if (
            not 0 <= k <= 0xFFFF
            or (t is int and not -SAFE_INT <= val <= SAFE_INT)
            or (t is not int and t is not float and val is not None)
        ):
            raise ProtocolError(BAD_FIELD, "metric %r: id 0..65535; nil, float or safe int" % k)


# Body fields per type: (key, kind, required). A kind is the largest value of an unsigned
# integer field, a Python type (str, bool, dict, list, bytes: exactly that type), or -n for a
# binary of exactly n bytes. Uplink bodies (what the store keeps) are checked field by field,
# optional ones included; downlink bodies only in the fields the envelope needs, the operation
# checking its own arguments (ACK result 1), so a device decodes with protocol/downlink.py alone.
_FIELDS = {
    M.BIRTH: (
        (M.B_FIRMWARE, str, 1),
        (M.B_BOARD, str, 1),
        (M.B_BOOT_REASON, _U8, 1),
        (M.B_CONFIG_HASH, -8, 0),
        (M.B_SAFE_MODE, bool, 0),
        (M.B_KIND, str, 0),
        (M.B_INTERVAL, _U32, 0),
        (M.B_BUFFERED, _U32, 0),
        (M.B_CONFIRM, _U8, 0),
    ),
    M.DEATH: ((M.D_REASON, _U8, 1),),
    M.EVENT: (
        (M.E_CODE, _U16, 1),
        (M.E_SEVERITY, _U8, 0),
        (M.E_TEXT, str, 0),
        (M.E_DATA, dict, 0),
    ),
    M.ACK: (
        (M.A_CMD_EPOCH, _U32, 1),
        (M.A_CMD_SEQ, _U32, 1),
        (M.A_RESULT, _U8, 1),
        (M.A_DATA, dict, 0),
    ),
    M.COMMAND: ((M.C_OP, _U32, 1), (M.C_EXPIRES, _U32, 1)),
    M.CONFIG: (),
    M.OTA: ((M.O_PHASE, _U32, 1),),
}


def check_body(mtype: int, body: object) -> None:
    """Shape of the body for its type; raises BAD_FIELD. Unknown extra keys are kept (a newer
    sender may add fields), unknown metric ids too."""
    if mtype == M.REPORT:
        _metrics(body)
        return
    if mtype == M.BATCH:
        if not isinstance(body, list) or not body:
            raise ProtocolError(BAD_FIELD, "batch is a non-empty array")
        for sample in body:
            if not isinstance(sample, list) or len(sample) != 2 or not _uint(sample[0]):
                raise ProtocolError(BAD_FIELD, "batch sample is [age_s, metrics]")
            _metrics(sample[1])
        return
    if mtype == M.CONFIRM:
        if confirm_check(body):
            raise ProtocolError(BAD_FIELD, "confirm ranges are 1..21 ascending disjoint triples")
        return
    if not isinstance(body, dict):
        raise ProtocolError(BAD_FIELD, "body is a map")
    for key, kind, required in _FIELDS[mtype]:
        if not required and key not in body:
            continue  # absent; present as nil is mistyped (nil is not absence)
        val = body.get(key)
        if type(kind) is not int:
            ok = type(val) is kind
        elif kind > 0:
            ok = type(val) is int and 0 <= val <= kind
        else:
            ok = type(val) is bytes and len(val) == -kind
        if not ok:
            raise ProtocolError(
                BAD_FIELD, "%s field %d missing or mistyped" % (M.NAMES[mtype], key)
            )
