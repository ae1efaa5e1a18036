"""The claim wire format (docs/PROVISIONING.md): how a board holding only a one-time claim token
gets its identity over the bootstrap topics, encrypted to a key pair it generated itself.

Pure and portable: X25519 (RFC 7748, Montgomery ladder on Python integers), HKDF-SHA256
(RFC 5869), and a stream cipher MicroPython can run (HMAC-SHA256 in counter mode as keystream,
encrypt-then-MAC with a separate key). Runs unchanged on MicroPython and CPython; imports only
protocol/ and hashlib. No typing/dataclasses/logging/asyncio/socket imports.

Wire (payload = msgpack map || 16-byte tag, tag = HMAC-SHA256(key, topic || 0x00 || map)[:16]):
  request  on idu-claim/1/<token id>/req,  tag key = token secret:
           {0: version 1, 1: nonce bin16, 2: board public key bin32, 3: board str (optional)}
  response on idu-claim/1/<token id>/resp, tag key = token secret:
           {0: version 1, 1: nonce bin16 (the request's), 2: status int,
            3: controller public key bin32 (status OK only), 4: sealed identity bin (OK only)}
  identity (plaintext of the sealed box):
           {0: device id, 1: key bin32, 2: broker username, 3: broker password or nil,
            4: site, 5: zone, 6: kind}
Sealing keys: HKDF-SHA256(salt = token secret, ikm = X25519(shared),
info = "idu-claim/1" || token id || board public || controller public || nonce) -> 64 bytes:
encryption key || MAC key. So only the holder of the board's private key reads the identity,
and only a holder of the token secret can have produced the response.
"""

import hashlib

from protocol.codec import packb, unpackb
from protocol.compat import Mac, compare_digest
from protocol.errors import (
    BAD_FIELD,
    BAD_KEY,
    BAD_TAG,
    BAD_TOPIC,
    TOO_BIG,
    TRUNCATED,
    UNKNOWN_VERSION,
    ProtocolError,
)

VERSION = 1
ROOT = "idu-claim/1/"
REQ = "req"
RESP = "resp"
TOKEN_ID_LEN = 8  # bytes; 16 hex digits in topics and bundles
SECRET_LEN = 16
NONCE_LEN = 16
KEY_LEN = 32  # X25519 keys and the device key
TAG_LEN = 16
MAX_PAYLOAD = 1024

# Response status codes. Anything but OK carries no identity; the board stops retrying on
# USED/EXPIRED/REFUSED (a person must issue a new token) and retries later on BUSY.
OK = 0
USED = 1
EXPIRED = 2
REFUSED = 3
BUSY = 4
STATUS_NAMES = {OK: "ok", USED: "used", EXPIRED: "expired", REFUSED: "refused", BUSY: "busy"}

# Request / response / identity field numbers.
Q_VERSION = 0
Q_NONCE = 1
Q_PUBLIC = 2
Q_BOARD = 3
S_VERSION = 0
S_NONCE = 1
S_STATUS = 2
S_PUBLIC = 3
S_SEALED = 4
I_DEVICE = 0
I_KEY = 1
I_USERNAME = 2
I_PASSWORD = 3
I_SITE = 4
I_ZONE = 5
I_KIND = 6

_HEX = "0123456789abcdef"
_P = 2**255 - 19
_A24 = 121665
_BASE = b"\x09" + bytes(31)
_INFO = b"idu-claim/1"


# --------------------------------------------------------------------------- topics
def check_token_id(token_id: str) -> str:
    """Token ids are 16 lowercase hex digits. Raises BAD_TOPIC."""
    if not isinstance(token_id, str) or len(token_id) != 2 * TOKEN_ID_LEN:
        raise ProtocolError(BAD_TOPIC, "token id must be %d hex digits" % (2 * TOKEN_ID_LEN))
    for ch in token_id:
        if ch not in _HEX:
            raise ProtocolError(BAD_TOPIC, "token id must be lowercase hex")
    return token_id


def topic(token_id: str, kind: str) -> str:
    if kind != REQ and kind != RESP:
        raise ProtocolError(BAD_TOPIC, "claim channel is req or resp")
    return ROOT + check_token_id(token_id) + "/" + kind


def parse_topic(name: str) -> tuple[str, str]:
    """Split a claim topic; raises BAD_TOPIC."""
    if not isinstance(name, str) or not name.startswith(ROOT):
        raise ProtocolError(BAD_TOPIC, "not " + ROOT + "<token id>/<req|resp>")
    parts = name[len(ROOT) :].split("/")
    if len(parts) != 2 or (parts[1] != REQ and parts[1] != RESP):
        raise ProtocolError(BAD_TOPIC, "not " + ROOT + "<token id>/<req|resp>")
    return check_token_id(parts[0]), parts[1]


# --------------------------------------------------------------------------- X25519
def _clamp(k: bytes) -> int:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(bytes(b), "little")


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 X25519(k, u). Not constant-time (Python integers): acceptable for the one-shot
    ephemeral keys of a claim, documented in docs/PROVISIONING.md. Raises BAD_KEY for wrong
    lengths and for an all-zero result (a low-order point from a hostile peer)."""
    if len(scalar) != KEY_LEN or len(u) != KEY_LEN:
        raise ProtocolError(BAD_KEY, "X25519 keys are 32 bytes")
    k = _clamp(scalar)
    ub = bytearray(u)
    ub[31] &= 127
    x1 = int.from_bytes(bytes(ub), "little") % _P
    p = _P
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    t = 254
    while t >= 0:
        kt = (k >> t) & 1
        if swap ^ kt:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = kt
        a = (x2 + z2) % p
        aa = a * a % p
        b = (x2 - z2) % p
        bb = b * b % p
        e = (aa - bb) % p
        c = (x3 + z3) % p
        d = (x3 - z3) % p
        da = d * a % p
        cb = c * b % p
        s = (da + cb) % p
        x3 = s * s % p
        s = (da - cb) % p
        z3 = x1 * (s * s % p) % p
        x2 = aa * bb % p
        z2 = e * ((aa + _A24 * e) % p) % p
        t -= 1
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    out = (x2 * pow(z2, p - 2, p)) % p
    res = out.to_bytes(KEY_LEN, "little")
    if res == bytes(KEY_LEN):
        raise ProtocolError(BAD_KEY, "X25519 produced zero: the peer sent a low-order point")
    return res


def public_key(private: bytes) -> bytes:
    return x25519(private, _BASE)


def keypair(private: bytes) -> tuple[bytes, bytes]:
    """(private, public) from 32 random bytes (os.urandom(32) on both interpreters)."""
    priv = bytes(private)
    return priv, public_key(priv)


# --------------------------------------------------------------------------- HMAC / HKDF / box
def hmac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of the concatenated parts; key at most 64 bytes (all ours are 16 or 32)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    m = Mac(key)
    if len(parts) <= 3:
        parts = parts + (b"",) * (3 - len(parts))
        return m.digest(parts[0], parts[1], parts[2])
    return m.digest(b"".join(parts), b"", b"")


def hkdf(salt: bytes, ikm: bytes, info: bytes, n: int) -> bytes:
    """RFC 5869 HKDF-SHA256, n <= 255 * 32."""
    prk = hmac(salt if salt else bytes(32), ikm)
    out = b""
    t = b""
    i = 1
    while len(out) < n:
        t = hmac(prk, t, info, bytes((i,)))
        out += t
        i += 1
    return out[:n]


def _keystream_xor(key: bytes, nonce: bytes, data: bytes) -> bytes:
    m = Mac(key)
    out = bytearray(len(data))
    ctr = 0
    pos = 0
    while pos < len(data):
        block = m.digest(nonce, ctr.to_bytes(4, "big"), b"")
        n = min(32, len(data) - pos)
        for i in range(n):
            out[pos + i] = data[pos + i] ^ block[i]
        pos += n
        ctr += 1
    return bytes(out)


def seal_box(keys: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """Encrypt-then-MAC: ciphertext || HMAC(mac key, nonce || ciphertext)[:16]. keys is the
    64-byte HKDF output (encryption key || MAC key)."""
    ct = _keystream_xor(keys[:32], nonce, plaintext)
    return ct + hmac(keys[32:64], nonce, ct)[:TAG_LEN]


def open_box(keys: bytes, nonce: bytes, sealed: bytes) -> bytes:
    """Inverse of seal_box; raises BAD_TAG when the box was not sealed with these keys."""
    if len(sealed) < TAG_LEN:
        raise ProtocolError(TRUNCATED, "sealed box shorter than its tag")
    ct = sealed[:-TAG_LEN]
    if not compare_digest(hmac(keys[32:64], nonce, ct)[:TAG_LEN], sealed[-TAG_LEN:]):
        raise ProtocolError(BAD_TAG, "identity box does not open: wrong key pair or tampered")
    return _keystream_xor(keys[:32], nonce, ct)


def box_keys(
    shared: bytes, secret: bytes, token_id: str, board_pub: bytes, ctrl_pub: bytes, nonce: bytes
) -> bytes:
    info = _INFO + bytes.fromhex(token_id) + board_pub + ctrl_pub + nonce
    return hkdf(secret, shared, info, 64)


# --------------------------------------------------------------------------- framing
def _frame(secret: bytes, topic_name: str, fields: dict[int, object]) -> bytes:
    body = packb(fields, MAX_PAYLOAD)
    return body + hmac(secret, topic_name.encode(), b"\x00", body)[:TAG_LEN]


def _unframe(payload: bytes, topic_name: str, secret: bytes | None) -> dict[int, object]:
    """Verify (when secret is given) and decode; raises ProtocolError."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(TOO_BIG, "claim payload over %d bytes" % MAX_PAYLOAD)
    if len(payload) <= TAG_LEN:
        raise ProtocolError(TRUNCATED, "claim payload shorter than its tag")
    body = bytes(payload[:-TAG_LEN])
    if secret is not None:
        want = hmac(secret, topic_name.encode(), b"\x00", body)[:TAG_LEN]
        if not compare_digest(want, bytes(payload[-TAG_LEN:])):
            raise ProtocolError(BAD_TAG, "claim tag does not match the token secret")
    v = unpackb(body)
    if not isinstance(v, dict):
        raise ProtocolError(BAD_FIELD, "claim payload is a map")
    if v.get(0) != VERSION or isinstance(v.get(0), bool):
        raise ProtocolError(UNKNOWN_VERSION, "claim version " + str(v.get(0)))
    return v


def _bin(v: dict[int, object], k: int, n: int, what: str) -> bytes:
    x = v.get(k)
    if not isinstance(x, bytes) or (n and len(x) != n):
        raise ProtocolError(BAD_FIELD, "%s must be %d bytes" % (what, n))
    return x


def _str(v: dict[int, object], k: int, what: str, optional: bool = False) -> str | None:
    x = v.get(k)
    if x is None and optional:
        return None
    if not isinstance(x, str):
        raise ProtocolError(BAD_FIELD, what + " must be a string")
    return x


# --------------------------------------------------------------------------- request
def encode_request(
    token_id: str, secret: bytes, nonce: bytes, board_pub: bytes, board: str = ""
) -> tuple[str, bytes]:
    """The board's claim request: proves the token secret without revealing it."""
    if len(secret) != SECRET_LEN or len(nonce) != NONCE_LEN or len(board_pub) != KEY_LEN:
        raise ProtocolError(BAD_KEY, "secret 16, nonce 16 and public key 32 bytes")
    t = topic(token_id, REQ)
    fields: dict[int, object] = {
        Q_VERSION: VERSION,
        Q_NONCE: bytes(nonce),
        Q_PUBLIC: bytes(board_pub),
    }
    if board:
        fields[Q_BOARD] = board
    return t, _frame(secret, t, fields)


class Request:
    """A parsed claim request. parse_request() checks the shape only; the responder looks the
    token up, then calls verify(secret), which raises BAD_TAG for a forged request."""

    def __init__(
        self, token_id: str, topic_name: str, payload: bytes, fields: dict[int, object]
    ) -> None:
        self.token_id = token_id
        self.topic = topic_name
        self.payload = payload
        self.nonce = _bin(fields, Q_NONCE, NONCE_LEN, "nonce")
        self.public = _bin(fields, Q_PUBLIC, KEY_LEN, "public key")
        self.board = _str(fields, Q_BOARD, "board", True)

    def verify(self, secret: bytes) -> None:
        _unframe(self.payload, self.topic, secret)


def parse_request(topic_name: str, payload: bytes) -> Request:
    """Raises ProtocolError (BAD_TOPIC, TRUNCATED, BAD_FIELD, ...) on a malformed request."""
    token_id, kind = parse_topic(topic_name)
    if kind != REQ:
        raise ProtocolError(BAD_TOPIC, "requests travel on .../req")
    return Request(token_id, topic_name, bytes(payload), _unframe(payload, topic_name, None))


# --------------------------------------------------------------------------- response
def encode_response(
    req: Request,
    secret: bytes,
    status: int,
    identity: dict[int, object] | None = None,
    ephemeral: bytes | None = None,
) -> tuple[str, bytes]:
    """The controller's answer. With status OK, identity (a dict of I_* fields) is sealed to the
    board's public key with a controller key pair made from ephemeral (32 fresh random bytes,
    never reused)."""
    t = topic(req.token_id, RESP)
    fields: dict[int, object] = {S_VERSION: VERSION, S_NONCE: req.nonce, S_STATUS: status}
    if status == OK:
        if identity is None or ephemeral is None:
            raise ProtocolError(BAD_FIELD, "an OK response carries an identity")
        priv, pub = keypair(ephemeral)
        keys = box_keys(x25519(priv, req.public), secret, req.token_id, req.public, pub, req.nonce)
        fields[S_PUBLIC] = pub
        fields[S_SEALED] = seal_box(keys, req.nonce, packb(identity, MAX_PAYLOAD))
    return t, _frame(secret, t, fields)


def decode_response(
    topic_name: str,
    payload: bytes,
    token_id: str,
    secret: bytes,
    private: bytes,
    board_pub: bytes,
    nonce: bytes,
) -> tuple[int, dict[int, object] | None]:
    """The board's side. Raises ProtocolError: BAD_TAG (not from the token's issuer, or not
    sealed to this key pair), BAD_FIELD (another request's answer, or a malformed identity)."""
    tid, kind = parse_topic(topic_name)
    if tid != token_id or kind != RESP:
        raise ProtocolError(BAD_TOPIC, "not the response topic of this token")
    v = _unframe(payload, topic_name, secret)
    if v.get(S_NONCE) != nonce:
        raise ProtocolError(BAD_FIELD, "response to another request (nonce differs)")
    status = v.get(S_STATUS)
    if not isinstance(status, int) or isinstance(status, bool):
        raise ProtocolError(BAD_FIELD, "status must be an integer")
    if status != OK:
        return status, None
    ctrl_pub = _bin(v, S_PUBLIC, KEY_LEN, "controller public key")
    sealed = _bin(v, S_SEALED, 0, "sealed identity")
    keys = box_keys(x25519(private, ctrl_pub), secret, token_id, board_pub, ctrl_pub, nonce)
    ident = unpackb(open_box(keys, nonce, sealed))
    if not isinstance(ident, dict):
        raise ProtocolError(BAD_FIELD, "identity is a map")
    for k, what in ((I_DEVICE, "device"), (I_USERNAME, "username"), (I_SITE, "site")):
        _str(ident, k, what)
    for k, what in ((I_ZONE, "zone"), (I_KIND, "kind")):
        _str(ident, k, what)
    _str(ident, I_PASSWORD, "password", True)
    _bin(ident, I_KEY, KEY_LEN, "device key")
    return status, ident
