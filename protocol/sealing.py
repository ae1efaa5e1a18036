"""The envelope's hot path a device runs for every message it sends: write the fields before the
body into a caller-owned Writer, then append the tag. Split out of protocol.envelope so a device
keeps only this resident, not the decoder and its tables (their code costs heap on a device).
Imports only writer and sign (not errors: see writer.refuse); protocol.envelope re-exports
everything here."""

from protocol.sign import TAG_LEN, Signer
from protocol.writer import Writer, refuse

VERSION = 1
TRAILER = b"\x07\xc4\x10"  # key 7, bin8, length 16: the fixed head of the tag entry
TRAILER_LEN = 3 + TAG_LEN


def write_head(w: Writer, mtype: int, epoch: int, seq: int, ts: int | None, up: int | None) -> None:
    """Map header and every field before the body; the caller then writes the body value and
    calls seal(). Keys are the wire's envelope keys (protocol.messages K_*), written as literals
    so this module needs no table."""
    w.map_head(6 + (ts is not None) + (up is not None))
    w.byte(0)  # K_VERSION
    w.byte(VERSION)
    w.byte(1)  # K_TYPE
    w.integer(mtype)
    w.byte(2)  # K_EPOCH
    w.integer(epoch)
    w.byte(3)  # K_SEQ
    w.integer(seq)
    if ts is not None:
        w.byte(4)  # K_TS
        w.integer(ts)
    if up is not None:
        w.byte(5)  # K_UP
        w.integer(up)
    w.byte(6)  # K_BODY


def seal(w: Writer, signer: Signer, topic: bytes) -> int:
    """Append the tag entry over everything written so far; returns the payload length. The
    tag is copied byte by byte out of the digest: slicing it would allocate on every report."""
    d = signer.digest(topic, w.mv[: w.pos])
    w.extend(TRAILER)
    p = w.pos
    if p + TAG_LEN > len(w.buf):
        refuse("too_big", "no room for the tag")
    buf = w.buf
    for i in range(TAG_LEN):
        buf[p + i] = d[i]
    w.pos = p + TAG_LEN
    return w.pos
