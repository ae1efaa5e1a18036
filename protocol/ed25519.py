"""Ed25519 signature verification (RFC 8032 section 5.1.7) in plain Python, for devices: MicroPython
has no public-key module, so a device checks release signatures with this file (docs/OTA.md).
Verify only: signing happens offline on the operator's machine with the `cryptography` package
(tools/release_cmds.py). Imports protocol.compat/errors and a SHA-512 (hashlib's on CPython,
protocol.sha512 on MicroPython, whose hashlib has none).

Verification is variable-time, which is fine: every input (public key, message, signature) is
public. The check is the cofactorless one RFC 8032 allows and ref10/OpenSSL use: S < L, the
public key decodes canonically to a curve point, and the encoding of [S]B - [k]A equals the
signature's R bytes exactly (so a non-canonical R never verifies). It agrees with `cryptography`
on the RFC 8032 vectors and on random keys and messages (tests/test_release_ed25519.py).

Speed on MicroPython is bounded by 253 point doublings on Python integers; the double scalar
multiplication shares them (Straus) and uses width-w NAF digits for both scalars. The table of
odd multiples of the base point is built per call, not cached: docs/OTA.md has the measured
trade-off (w=4: 4.9 ms and a 2 KB table; w=8 holds 31 KB and is slower to build than it saves;
caching the base table would save 0.1 ms and hold its 2 KB for as long as the module)."""

from protocol.compat import compare_digest
from protocol.errors import BAD_KEY, ProtocolError

try:
    from hashlib import sha512 as _sha512
except ImportError:  # MicroPython: md5, sha1 and sha256 only
    from protocol.sha512 import sha512 as _sha512  # type: ignore[assignment]

BAD_SIGNATURE = "bad_signature"  # the signature does not verify with the key it was checked with

KEY_LEN = 32
SIG_LEN = 64

_P = 57896044618658097711785492504343953926634992332820282019728792003956564819949  # 2^255-19
_L = 7237005577332262213973186563042994240857116359379907606001950938285454250989  # group order
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161  # 2d mod p
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_SQRTM1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_MASK255 = (1 << 255) - 1

# NAF widths: tables of 2^(w-2) odd multiples. Measured on the unix port (docs/OTA.md): w=4 is
# as fast as w=5 with half the table; wider tables cost more to build and hold than they save.
W_A = 4
W_B = 4


def decode_point(s: bytes) -> tuple:  # type: ignore[type-arg]
    """RFC 8032 5.1.3: 32 bytes to a point in extended coordinates (X, Y, Z, T). Raises
    ProtocolError(BAD_KEY) for a y >= p, an x that does not exist, or the sign bit set on x = 0."""
    if len(s) != KEY_LEN:
        raise ProtocolError(BAD_KEY, "Ed25519 keys are 32 bytes")
    p = _P
    y = int.from_bytes(bytes(s), "little")
    sign = y >> 255
    y &= _MASK255
    if y >= p:
        raise ProtocolError(BAD_KEY, "not a canonical point encoding")
    yy = y * y % p
    u = (yy - 1) % p
    v = (_D * yy + 1) % p
    v3 = v * v % p * v % p
    x = u * v3 % p * pow(u * v3 % p * v3 % p * v % p, (p - 5) // 8, p) % p
    vxx = v * x % p * x % p
    if vxx != u:
        if vxx != p - u:
            raise ProtocolError(BAD_KEY, "not a point on the curve")
        x = x * _SQRTM1 % p
    if x == 0 and sign:
        raise ProtocolError(BAD_KEY, "not a canonical point encoding")
    if x & 1 != sign:
        x = p - x
    return (x, y, 1, x * y % p)


def _cached(X: int, Y: int, Z: int, T: int) -> tuple:  # type: ignore[type-arg]
    """(Y+X, Y-X, 2Z, 2dT): the form the addition below consumes."""
    p = _P
    return ((Y + X) % p, (Y - X) % p, 2 * Z % p, T * _D2 % p)


def _add(P: tuple, c: tuple) -> tuple:  # type: ignore[type-arg]
    """Extended + cached (add-2008-hwcd-3, a = -1); only used to build the tables."""
    p = _P
    X, Y, Z, T = P
    a = (Y - X) * c[1] % p
    b = (Y + X) * c[0] % p
    cc = T * c[3] % p
    d = Z * c[2] % p
    e = b - a
    f = d - cc
    g = d + cc
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _table(P: tuple, w: int) -> list:  # type: ignore[type-arg]
    """[P, 3P, 5P, ..., (2^(w-1)-1)P] in cached form."""
    p = _P
    X, Y, Z, T = P
    # 2P (dbl-2008-hwcd, a = -1)
    a = X * X % p
    b = Y * Y % p
    c = 2 * Z * Z % p
    e = ((X + Y) * (X + Y) - a - b) % p
    g = b - a
    f = g - c
    h = -a - b
    two = _cached(e * f % p, g * h % p, f * g % p, e * h % p)
    out = [_cached(X, Y, Z, T)]
    Q = P
    for _ in range((1 << (w - 2)) - 1):
        Q = _add(Q, two)
        out.append(_cached(Q[0], Q[1], Q[2], Q[3]))
    return out


def _naf(k: int, w: int) -> bytearray:
    """Width-w NAF digits of k, least significant first, each stored as a signed byte."""
    out = bytearray(256)
    width = 1 << w
    half = width >> 1
    i = 0
    while k:
        if k & 1:
            d = k & (width - 1)
            if d >= half:
                d -= width
            k -= d
            out[i] = d & 0xFF
        i += 1
        k >>= 1
    return out


def _double_mul(s: int, k: int, A: tuple) -> tuple:  # type: ignore[type-arg]
    """[s]B + [k]A in extended coordinates: Straus with both scalars in NAF form, one shared
    doubling per bit. The point operations are written inline: on MicroPython a function call
    costs as much as a field multiplication."""
    p = _P
    ns = _naf(s, W_B)
    nk = _naf(k, W_A)
    tb = _table((_BX, _BY, 1, _BX * _BY % p), W_B)
    ta = _table(A, W_A)
    i = 255
    while i >= 0 and ns[i] == 0 and nk[i] == 0:
        i -= 1
    X, Y, Z, T = 0, 1, 1, 0
    while i >= 0:
        ds = ns[i]
        dk = nk[i]
        # doubling (dbl-2008-hwcd, a = -1); T only when an addition follows
        a = X * X % p
        b = Y * Y % p
        c = 2 * Z * Z % p
        e = ((X + Y) * (X + Y) - a - b) % p
        g = b - a
        f = g - c
        h = -a - b
        X = e * f % p
        Y = g * h % p
        Z = f * g % p
        if ds or dk:
            T = e * h % p
        for d, tab in ((ds, tb), (dk, ta)):
            if d:
                if d < 128:
                    q = tab[d >> 1]
                    a = (Y - X) * q[1] % p
                    b = (Y + X) * q[0] % p
                    c = T * q[3] % p
                else:  # a negative digit: add the negated point (swap Y+X / Y-X, negate T)
                    q = tab[(256 - d) >> 1]
                    a = (Y - X) * q[0] % p
                    b = (Y + X) * q[1] % p
                    c = -T * q[3] % p
                dd = Z * q[2] % p
                e = b - a
                f = dd - c
                g = dd + c
                h = b + a
                X = e * f % p
                Y = g * h % p
                Z = f * g % p
                T = e * h % p
        i -= 1
    return (X, Y, Z, T)


def encode_point(P: tuple) -> bytes:  # type: ignore[type-arg]
    p = _P
    zi = pow(P[2], p - 2, p)
    x = P[0] * zi % p
    y = P[1] * zi % p
    out: bytes = (y | ((x & 1) << 255)).to_bytes(32, "little")
    return out


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Return None when signature is public_key's Ed25519 signature of message; otherwise raise
    ProtocolError: BAD_KEY for a key that is not a valid encoded point, BAD_SIGNATURE for any
    signature that does not verify (wrong length, S >= L, or the equation fails). Raises rather
    than returning a bool, so a forgotten check fails closed."""
    A = decode_point(public_key)
    if len(signature) != SIG_LEN:
        raise ProtocolError(BAD_SIGNATURE, "Ed25519 signatures are 64 bytes")
    r = bytes(signature[:32])
    s = int.from_bytes(bytes(signature[32:]), "little")
    if s >= _L:
        raise ProtocolError(BAD_SIGNATURE, "S is not below the group order")
    h = _sha512(r)
    h.update(bytes(public_key))
    h.update(bytes(message))
    k = int.from_bytes(h.digest(), "little") % _L
    p = _P
    R = _double_mul(s, k, ((p - A[0]) % p, A[1], A[2], (p - A[3]) % p))  # [S]B + [k](-A)
    if not compare_digest(encode_point(R), r):
        raise ProtocolError(BAD_SIGNATURE)
