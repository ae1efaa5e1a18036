"""The msgpack encoder a device keeps resident: Writer (canonical encoding into a caller-owned
buffer). Split out of protocol.codec, which re-exports it and adds packb, so the report path
does not hold the decoder's code; protocol.errors is imported only when something is refused
(a device's reports never are). No imports beyond struct.
"""

import struct

# For the type checker only: protocol modules import no typing at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

MAX_DEPTH = 5  # envelope > batch > sample > metrics map, plus one spare level
MAX_ITEMS = 64  # entries in one array or map
MAX_STR = 255  # bytes in one string
MAX_BIN = 2048  # bytes in one binary (an OTA chunk)


def refuse(code: str, detail: str = "") -> "NoReturn":
    """Raise ProtocolError(code, detail), importing protocol.errors only now: a device's report
    path then never loads it. `code` is a literal from protocol.errors.CODES (the codes are plain
    strings; tests/test_codec_paths.py checks every literal passed here is one). The encoder
    passes no detail: it refuses only what its caller built wrong, and on a device every
    string constant of 10 or more characters is a heap object for as long as the module is
    loaded (64 bytes or more each on the 64-bit unix port)."""
    from protocol.errors import ProtocolError

    raise ProtocolError(code, detail)


class Writer:
    """Encodes into a caller-owned bytearray: no allocation per item, so a device can build and
    sign a report in a buffer it allocated once at boot. Raises TOO_BIG when the buffer is full."""

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.mv = memoryview(buf)
        self.pos = 0

    def byte(self, b: int) -> None:
        p = self.pos
        if p >= len(self.buf):
            refuse("too_big")
        self.buf[p] = b
        self.pos = p + 1

    def extend(self, b: bytes) -> None:
        p = self.pos
        n = len(b)
        if p + n > len(self.buf):
            refuse("too_big")
        self.mv[p : p + n] = b
        self.pos = p + n

    def packed(self, fmt: str, size: int, code: int, n: int) -> None:
        """One type byte and a big-endian number in one struct call: a call per byte would
        dominate a device's report time."""
        p = self.pos
        if p + size > len(self.buf):
            refuse("too_big")
        struct.pack_into(fmt, self.buf, p, code, n)
        self.pos = p + size

    def integer(self, n: int) -> None:
        if -32 <= n < 0x80:
            self.byte(n & 0xFF)
        elif n >= 0:
            if n <= 0xFF:
                self.packed(">BB", 2, 0xCC, n)
            elif n <= 0xFFFF:
                self.packed(">BH", 3, 0xCD, n)
            elif n <= 0xFFFFFFFF:
                self.packed(">BI", 5, 0xCE, n)
            elif n <= 0xFFFFFFFFFFFFFFFF:
                self.packed(">BQ", 9, 0xCF, n)
            else:
                refuse("too_big")
        elif n >= -0x80:
            self.packed(">Bb", 2, 0xD0, n)
        elif n >= -0x8000:
            self.packed(">Bh", 3, 0xD1, n)
        elif n >= -0x80000000:
            self.packed(">Bi", 5, 0xD2, n)
        elif n >= -0x8000000000000000:
            self.packed(">Bq", 9, 0xD3, n)
        else:
            refuse("too_big")

    def head(self, n: int, fix: int, fixmax: int, c8: int, c16: int) -> None:
        if n <= fixmax:
            self.byte(fix | n)
        elif c8 and n <= 0xFF:
            self.packed(">BB", 2, c8, n)
        elif n <= 0xFFFF:
            self.packed(">BH", 3, c16, n)
        else:
            refuse("too_big")

    def map_head(self, n: int) -> None:
        if n > MAX_ITEMS:
            refuse("too_big")
        self.head(n, 0x80, 15, 0, 0xDE)

    def array_head(self, n: int) -> None:
        if n > MAX_ITEMS:
            refuse("too_big")
        self.head(n, 0x90, 15, 0, 0xDC)

    def bin(self, b: bytes) -> None:
        if len(b) > MAX_BIN:
            refuse("too_big")
        self.head(len(b), 0, -1, 0xC4, 0xC5)
        self.extend(b)

    def value(self, obj: object, depth: int = 0) -> None:
        """Canonical encoding of obj. Raises ProtocolError on types or sizes the protocol does
        not carry. Two value rules are left to the caller, since this module stays in a device's
        heap and a device's values are integers it measured: text MUST NOT hold U+0000 and
        floats MUST be finite (receivers refuse both as bad_type, docs/PROTOCOL.md section 4)."""
        if depth >= MAX_DEPTH:
            refuse("too_deep")
        if obj is None:
            self.byte(0xC0)
        elif obj is True:
            self.byte(0xC3)
        elif obj is False:
            self.byte(0xC2)
        elif isinstance(obj, int):
            self.integer(obj)
        elif isinstance(obj, float):
            self.byte(0xCB)
            self.extend(struct.pack(">d", obj))
        elif isinstance(obj, str):
            b = obj.encode()
            if len(b) > MAX_STR:
                refuse("too_big")
            self.head(len(b), 0xA0, 31, 0xD9, 0xDA)
            self.extend(b)
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            self.bin(bytes(obj))
        elif isinstance(obj, (list, tuple)):
            self.array_head(len(obj))
            for item in obj:
                self.value(item, depth + 1)
        elif isinstance(obj, dict):
            self.map_head(len(obj))
            for k in sorted(obj):
                if not isinstance(k, int) or isinstance(k, bool):
                    refuse("bad_type")
                self.integer(k)
                self.value(obj[k], depth + 1)
        else:
            refuse("bad_type")
