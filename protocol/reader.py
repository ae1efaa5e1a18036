"""The msgpack decoder (Reader) a device loads to open a downlink message: split out of
protocol.codec, which re-exports it and adds unpackb and packb, so a device's command path holds
only the cursor and its checks. Decoding is total: any input decodes or raises ProtocolError
(through writer.refuse, which imports protocol.errors only then); lengths are checked against the
bytes actually present before anything is allocated. Imports struct and writer.
"""

import struct

from protocol.writer import MAX_BIN, MAX_DEPTH, MAX_ITEMS, MAX_STR, refuse


def utf8_ok(b: bytes) -> bool:
    """Protocol text: well-formed UTF-8 (RFC 3629 table 3-7: no overlong forms, surrogates or
    code points above U+10FFFF) without U+0000, which MQTT forbids in its own strings and
    PostgreSQL cannot store in text (docs/PROTOCOL.md section 4)."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if 0 < c < 0x80:
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
    the bytes that are really there. Strings, arrays and maps are decoded inside value(), not in
    a method each, and refusals carry their code only: on a device every function and every
    string constant of 10+ characters costs heap while a downlink message is read."""

    def __init__(self, data: bytes, pos: int = 0, end: int = -1) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end < 0 else end

    def uint(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            refuse("truncated")
        self.pos = p + n
        d = self.data
        v = 0
        for i in range(p, p + n):
            v = (v << 8) | d[i]
        return v

    def raw(self, n: int, limit: int) -> bytes:
        if n > limit:
            refuse("too_big")
        p = self.pos
        if p + n > self.end:
            refuse("truncated")
        self.pos = p + n
        return bytes(self.data[p : p + n])

    def value(self, depth: int = 0) -> object:
        if depth >= MAX_DEPTH:
            refuse("too_deep")
        b = self.uint(1)
        if b < 0x80:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if 0xCC <= b <= 0xCF:
            return self.uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            v = self.uint(n)
            top = 1 << (8 * n - 1)
            return v - (top << 1) if v & top else v
        if b == 0xCA or b == 0xCB:
            n = 4 if b == 0xCA else 8
            f = struct.unpack(">f" if n == 4 else ">d", self.raw(n, n))[0]
            if f - f:  # NaN or an infinity (x - x is 0.0 only for finite x): no store holds it
                refuse("bad_type")
            return f
        if b == 0xC4 or b == 0xC5 or b == 0xC6:
            return self.raw(self.uint(1 << (b - 0xC4)), MAX_BIN)
        # What is left is a string, an array or a map: its kind (the fix form's high bits) and
        # its length, then one decoder each.
        if b <= 0x9F:
            kind = b & 0xF0
            n = b & 0x0F
        elif b <= 0xBF:
            kind = 0xA0
            n = b & 0x1F
        elif b == 0xD9 or b == 0xDA or b == 0xDB:
            kind = 0xA0
            n = self.uint(1 << (b - 0xD9))
        elif b == 0xDC or b == 0xDD:
            kind = 0x90
            n = self.uint(2 if b == 0xDC else 4)
        elif b == 0xDE or b == 0xDF:
            kind = 0x80
            n = self.uint(2 if b == 0xDE else 4)
        else:
            refuse("bad_type")  # a msgpack type the protocol does not use
        if kind == 0xA0:
            raw = self.raw(n, MAX_STR)
            if utf8_ok(raw):  # MicroPython's decode() does not reject what utf8_ok does
                try:
                    return raw.decode()
                except UnicodeError:
                    pass
            refuse("bad_type")  # not UTF-8
        if n > MAX_ITEMS:
            refuse("too_big")
        if (n if kind == 0x90 else 2 * n) > self.end - self.pos:
            refuse("truncated")
        if kind == 0x90:
            return [self.value(depth + 1) for _ in range(n)]
        out = {}
        for _ in range(n):
            k = self.value(depth + 1)
            if not isinstance(k, int) or isinstance(k, bool):
                refuse("bad_type")  # map keys are integers
            if k in out:
                refuse("bad_field")  # a repeated key
            out[k] = self.value(depth + 1)
        return out
