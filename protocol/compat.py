"""The interpreter differences, kept in one place: MicroPython has no hmac, no
hashlib.sha256().copy() and no hmac.compare_digest. Everything else in protocol/ is plain Python
that runs unchanged on both interpreters."""

import hashlib

try:
    import hmac as _hmac

    hashlib.sha256().copy()  # MicroPython's sha256 has no copy(): fall through to the portable path
    compare_digest = _hmac.compare_digest
    CPYTHON = True
except (ImportError, AttributeError):
    CPYTHON = False

    def compare_digest(a: bytes, b: bytes) -> bool:  # type: ignore[misc]
        """Constant-time for equal lengths: every byte is looked at whatever the first mismatch."""
        if len(a) != len(b):
            return False
        r = 0
        for i in range(len(a)):
            r |= a[i] ^ b[i]
        return r == 0


class Mac:
    """HMAC-SHA256 with the key schedule done once. On CPython the padded hash states are copied
    (no re-hashing of the pads); on MicroPython the pads are re-fed, the only option there."""

    def __init__(self, key: bytes) -> None:
        """The inner and outer pads of a key of up to 64 bytes (RFC 2104), computed once."""
        ipad = bytearray(64)
        opad = bytearray(64)
        for i in range(64):
            k = key[i] if i < len(key) else 0
            ipad[i] = k ^ 0x36
            opad[i] = k ^ 0x5C
        if CPYTHON:
            self._i = hashlib.sha256(ipad)
            self._o = hashlib.sha256(opad)
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def digest(self, a: bytes, b: bytes, c: bytes | memoryview) -> bytes:
        """HMAC over the concatenation a || b || c without building it."""
        h = self._i.copy() if CPYTHON else hashlib.sha256(self._ipad)
        h.update(a)
        h.update(b)
        h.update(c)
        inner = h.digest()
        o = self._o.copy() if CPYTHON else hashlib.sha256(self._opad)
        o.update(inner)
        return o.digest()


# The msgpack C-extension fast path is CPython-only and lives in its own module, so its code is
# never loaded on a device (protocol/fastpath.py is not part of the firmware build).
fast_unpack: object = None
if CPYTHON:
    from protocol.fastpath import fast_unpack  # noqa: F401  (re-exported)
