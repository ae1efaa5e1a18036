"""Pure msgpack codec for the subset docs/PROTOCOL.md allows; identical on MicroPython and CPython.

Types: nil, bool, int (-2**63 .. 2**64-1), float (32/64-bit in, 64-bit out), str, bin, array,
map with integer keys. Encoding is canonical: smallest int form, map keys ascending, floats as
float64. Decoding is total: any input decodes or raises ProtocolError; lengths are checked
against the bytes actually present before anything is allocated. The encoder (Writer and the
limits) lives in protocol.writer and the decoder (Reader) in protocol.reader, both re-exported
here with packb and unpackb; a device loads writer for its reports, reader for a downlink
message, and this module only at boot (config.over). Errors are raised through writer.refuse.
"""

from protocol.reader import Reader as Reader
from protocol.reader import utf8_ok as utf8_ok
from protocol.writer import MAX_BIN as MAX_BIN
from protocol.writer import MAX_DEPTH as MAX_DEPTH
from protocol.writer import MAX_ITEMS as MAX_ITEMS
from protocol.writer import MAX_STR as MAX_STR
from protocol.writer import Writer as Writer
from protocol.writer import refuse


def packb(obj: object, limit: int = 4096) -> bytes:
    w = Writer(bytearray(limit))
    w.value(obj)
    return bytes(w.mv[: w.pos])


def unpackb(data: bytes) -> object:
    """Decode exactly one value that fills data; raises ProtocolError otherwise."""
    r = Reader(data)
    v = r.value()
    if r.pos != r.end:
        refuse("trailing_bytes")
    return v
