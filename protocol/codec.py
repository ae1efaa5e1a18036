"""Pure msgpack codec for the subset docs/PROTOCOL.md allows; identical on MicroPython and CPython.

Types: nil, bool, int (-2**63 .. 2**64-1), float (32/64-bit in, 64-bit out), str, bin, array,
map with integer keys. Encoding is canonical: smallest int form, map keys ascending, floats as
float64. Decoding is total: any input decodes or raises ProtocolError; lengths are checked
against the bytes actually present before anything is allocated. No imports beyond struct.
"""

import struct

from protocol.errors import (
    BAD_FIELD,
    BAD_TYPE,
    TOO_BIG,
    TOO_DEEP,
    TRAILING_BYTES,
    TRUNCATED,
    ProtocolError,
)

MAX_DEPTH = 5  # envelope > batch > sample > metrics map, plus one spare level
MAX_ITEMS = 64  # entries in one array or map
MAX_STR = 255  # bytes in one string
MAX_BIN = 2048  # bytes in one binary (an OTA chunk)


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
            raise ProtocolError(TOO_BIG, "packet over %d bytes" % len(self.buf))
        self.buf[p] = b
        self.pos = p + 1

    def extend(self, b: bytes) -> None:
        p = self.pos
        n = len(b)
        if p + n > len(self.buf):
            raise ProtocolError(TOO_BIG, "packet over %d bytes" % len(self.buf))
        self.mv[p : p + n] = b
        self.pos = p + n

    def packed(self, fmt: str, size: int, code: int, n: int) -> None:
        """One type byte and a big-endian number in one struct call: a call per byte would
        dominate a device's report time."""
        p = self.pos
        if p + size > len(self.buf):
            raise ProtocolError(TOO_BIG, "packet over %d bytes" % len(self.buf))
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
                raise ProtocolError(TOO_BIG, "integer above 2**64-1")
        elif n >= -0x80:
            self.packed(">Bb", 2, 0xD0, n)
        elif n >= -0x8000:
            self.packed(">Bh", 3, 0xD1, n)
        elif n >= -0x80000000:
            self.packed(">Bi", 5, 0xD2, n)
        elif n >= -0x8000000000000000:
            self.packed(">Bq", 9, 0xD3, n)
        else:
            raise ProtocolError(TOO_BIG, "integer below -2**63")

    def head(self, n: int, fix: int, fixmax: int, c8: int, c16: int) -> None:
        if n <= fixmax:
            self.byte(fix | n)
        elif c8 and n <= 0xFF:
            self.packed(">BB", 2, c8, n)
        elif n <= 0xFFFF:
            self.packed(">BH", 3, c16, n)
        else:
            raise ProtocolError(TOO_BIG, "length above 65535")

    def map_head(self, n: int) -> None:
        if n > MAX_ITEMS:
            raise ProtocolError(TOO_BIG, "map over %d entries" % MAX_ITEMS)
        self.head(n, 0x80, 15, 0, 0xDE)

    def array_head(self, n: int) -> None:
        if n > MAX_ITEMS:
            raise ProtocolError(TOO_BIG, "array over %d items" % MAX_ITEMS)
        self.head(n, 0x90, 15, 0, 0xDC)

    def bin(self, b: bytes) -> None:
        if len(b) > MAX_BIN:
            raise ProtocolError(TOO_BIG, "binary over %d bytes" % MAX_BIN)
        self.head(len(b), 0, -1, 0xC4, 0xC5)
        self.extend(b)

    def value(self, obj: object, depth: int = 0) -> None:
        """Canonical encoding of obj. Raises ProtocolError on types or sizes the protocol does
        not carry, so a sender cannot build a packet that receivers must refuse."""
        if depth >= MAX_DEPTH:
            raise ProtocolError(TOO_DEEP)
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
                raise ProtocolError(TOO_BIG, "string over %d bytes" % MAX_STR)
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
                    raise ProtocolError(BAD_TYPE, "map keys are integers")
                self.integer(k)
                self.value(obj[k], depth + 1)
        else:
            raise ProtocolError(BAD_TYPE, "cannot encode " + type(obj).__name__)


def packb(obj: object, limit: int = 4096) -> bytes:
    w = Writer(bytearray(limit))
    w.value(obj)
    return bytes(w.mv[: w.pos])


def utf8_ok(b: bytes) -> bool:
    """Well-formed UTF-8 (RFC 3629 table 3-7): no overlong forms, surrogates or code points
    above U+10FFFF."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            k = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if i + k >= n:
            return False
        if not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return False
        i += k + 1
    return True


class Reader:
    """A cursor over one packet. `end` bounds every read, so a declared length can never run past
    the bytes that are really there."""

    def __init__(self, data: bytes, pos: int = 0, end: int = -1) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end < 0 else end

    def need(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            raise ProtocolError(TRUNCATED)
        self.pos = p + n
        return p

    def uint(self, n: int) -> int:
        p = self.need(n)
        d = self.data
        v = 0
        for i in range(p, p + n):
            v = (v << 8) | d[i]
        return v

    def sint(self, n: int) -> int:
        v = self.uint(n)
        top = 1 << (8 * n - 1)
        return v - (top << 1) if v & top else v

    def raw(self, n: int, limit: int) -> bytes:
        if n > limit:
            raise ProtocolError(TOO_BIG, "item of %d bytes" % n)
        p = self.need(n)
        return bytes(self.data[p : p + n])

    def value(self, depth: int = 0) -> object:
        if depth >= MAX_DEPTH:
            raise ProtocolError(TOO_DEEP)
        b = self.data[self.need(1)]
        if b < 0x80:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if 0xCC <= b <= 0xCF:
            return self.uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return self.sint(1 << (b - 0xD0))
        if b == 0xCA:
            return struct.unpack(">f", self.raw(4, 4))[0]
        if b == 0xCB:
            return struct.unpack(">d", self.raw(8, 8))[0]
        if b == 0xC4 or b == 0xC5 or b == 0xC6:
            return self.raw(self.uint(1 << (b - 0xC4)), MAX_BIN)
        if b == 0xD9 or b == 0xDA or b == 0xDB:
            return self.text(self.uint(1 << (b - 0xD9)))
        if b == 0xDC or b == 0xDD:
            return self.array(self.uint(2 if b == 0xDC else 4), depth)
        if b == 0xDE or b == 0xDF:
            return self.map(self.uint(2 if b == 0xDE else 4), depth)
        raise ProtocolError(BAD_TYPE, "msgpack type 0x%02x is not used" % b)

    def text(self, n: int) -> str:
        raw = self.raw(n, MAX_STR)
        if not utf8_ok(raw):  # MicroPython's decode() does not reject these, so we do
            raise ProtocolError(BAD_TYPE, "string is not UTF-8")
        try:
            return raw.decode()
        except UnicodeError:
            raise ProtocolError(BAD_TYPE, "string is not UTF-8") from None

    def array(self, n: int, depth: int) -> list:  # type: ignore[type-arg]
        if n > MAX_ITEMS:
            raise ProtocolError(TOO_BIG, "array of %d items" % n)
        if n > self.end - self.pos:
            raise ProtocolError(TRUNCATED)
        return [self.value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> dict:  # type: ignore[type-arg]
        if n > MAX_ITEMS:
            raise ProtocolError(TOO_BIG, "map of %d entries" % n)
        if 2 * n > self.end - self.pos:
            raise ProtocolError(TRUNCATED)
        out = {}
        for _ in range(n):
            k = self.value(depth + 1)
            if not isinstance(k, int) or isinstance(k, bool):
                raise ProtocolError(BAD_TYPE, "map keys are integers")
            if k in out:
                raise ProtocolError(BAD_FIELD, "key %d repeated" % k)
            out[k] = self.value(depth + 1)
        return out


def unpackb(data: bytes) -> object:
    """Decode exactly one value that fills data; raises ProtocolError otherwise."""
    r = Reader(data)
    v = r.value()
    if r.pos != r.end:
        raise ProtocolError(TRAILING_BYTES)
    return v
