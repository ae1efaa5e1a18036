"""The signed release manifest (docs/PROTOCOL.md, "Release manifest"; docs/OTA.md): decoding,
signature and policy checks, as a device runs them before it fetches a byte of a release. Pure
and bounded: every input either yields a Manifest or raises ProtocolError with a named code,
never anything else. Imports protocol.reader/errors/ed25519 and hashlib; signing is CPython-only
(tools/release.py).

Layout (all lengths checked against the bytes present before anything is read):
    "IDUR" | format u8 (1) | 0 u8 | head length u16 BE | head (msgpack map, section 4 subset)
    | chunk table (n x 32-byte SHA-256, n = ceil(total / chunk)) | signature (64)
    | next-key signature (64, only when the head names a next key)
Both signatures are Ed25519 over CONTEXT || SHA-256(every byte before the first signature): a
47-byte message, so a device runs one SHA-512 block in Python whatever the manifest's size, and
streams the manifest itself through hashlib's native SHA-256 (verify_file reads it in pieces).
"""

import hashlib

from protocol import ed25519
from protocol.errors import (
    BAD_FIELD,
    BAD_TYPE,
    EXPIRED,
    TOO_BIG,
    TRAILING_BYTES,
    TRUNCATED,
    UNKNOWN_VERSION,
    ProtocolError,
)
from protocol.reader import Reader

# For the type checker only: protocol modules import no typing at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import NoReturn

MAGIC = b"IDUR"
FORMAT = 1
PREFIX_LEN = 8
CONTEXT = b"idufleet-rel/1\x00"  # 15 bytes: R || A || CONTEXT || digest fits one SHA-512 block
KEY_ID_LEN = 8
DIGEST_LEN = 32
SIG_LEN = 64
MAX_HEAD = 4096
MAX_FILES = 64  # the codec's array limit
MAX_PATH = 64
MAX_DISPLAY = 32
MIN_CHUNK = 256
MAX_CHUNK = 4096
MAX_CHUNKS = 4096  # 16 MiB at 4 KiB chunks; the table is read from flash, never held
MAX_U32 = 0xFFFFFFFF

# Head keys. 0-31 are this format's: an unknown one is bad_field (a newer field an old device
# must not ignore needs a new format). 32 and up are extensions a device may ignore.
H_VERSION = 0  # uint 1..2^32-1, monotonic: the order every check uses
H_DISPLAY = 1  # str: what people read ("1.4.0")
H_BOARD = 2  # str: a row of firmware/boards.py
H_FILES = 3  # array of [path str, size uint, sha256 bin32], ascending paths, no repeats
H_FIRMWARE = 4  # opt [size uint, sha256 bin32]: an image for the next OTA partition
H_TOTAL = 5  # uint: payload bytes (every file, then the image)
H_DIGEST = 6  # bin32: SHA-256 of the payload
H_CHUNK = 7  # uint: chunk size, a power of two 256..4096
H_FLOOR = 8  # uint <= version: devices that install this never accept a version <= floor again
H_EXPIRES = 9  # uint unix seconds: refused from then on (freeze protection)
H_KEY_ID = 10  # bin8: first 8 bytes of SHA-256 of the signing public key
H_NEXT_KEY = 11  # opt bin32: the release key that replaces this one after install
H_FROM = 12  # opt uint: the lowest installed version this release may be installed over
H_CREATED = 13  # opt uint unix seconds: informational
H_KIND = 14  # opt str: device class ("ap", "sensor"); absent: every class
_LAST_KNOWN = 31

# Refusal codes beyond protocol.errors (docs/PROTOCOL.md, "Release manifest").
BAD_SIGNATURE = ed25519.BAD_SIGNATURE  # a signature does not verify
WRONG_KEY = "wrong_key"  # signed by a key other than the device's release key
WRONG_BOARD = "wrong_board"  # built for another board or device class
BELOW_FLOOR = "below_floor"  # version at or below the device's anti-rollback floor
NOT_NEWER = "not_newer"  # version at or below the installed one
JUMP_NOT_ALLOWED = "jump_not_allowed"  # installed version below the release's `from`
CODES = (BAD_SIGNATURE, WRONG_KEY, WRONG_BOARD, BELOW_FLOOR, NOT_NEWER, JUMP_NOT_ALLOWED)


def key_id(public_key: bytes) -> bytes:
    return hashlib.sha256(bytes(public_key)).digest()[:KEY_ID_LEN]


def _bad(what: str) -> "NoReturn":
    raise ProtocolError(BAD_FIELD, what)


def _uint(v: object, what: str, hi: int = MAX_U32) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > hi:
        _bad(what)
    return v


def _bin(v: object, n: int, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != n:
        _bad(what)
    return v


def _path_ok(p: object) -> bool:
    """Relative, '/'-separated, [a-z0-9_.-] segments, none empty, '.' or '..'."""
    if not isinstance(p, str) or not 0 < len(p) <= MAX_PATH:
        return False
    for seg in p.split("/"):
        if not seg or seg == "." or seg == "..":
            return False
        for ch in seg:
            if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch in "_.-"):
                return False
    return True


def _count(r: Reader, fix: int) -> int:
    """The length of the map (fix 0x80) or array (fix 0x90) that starts at r.pos."""
    b = r.uint(1)
    if fix <= b <= fix + 15:
        return b & 15
    if b == fix + 0x4C or b == fix + 0x4D:  # map 16/32 (de, df) or array 16/32 (dc, dd)
        n = r.uint(2 if b == fix + 0x4C else 4)
        if n > MAX_FILES:
            raise ProtocolError(TOO_BIG, "items")
        return n
    _bad("type")


def _entry(r: Reader, last: str) -> tuple:  # type: ignore[type-arg]
    """One [path, size, sha256] of the files array, checked; paths strictly ascending."""
    f = r.value(2)
    if not isinstance(f, list) or len(f) != 3 or not _path_ok(f[0]) or f[0] <= last:
        _bad("files")
    return (f[0], _uint(f[1], "files"), _bin(f[2], DIGEST_LEN, "files"))


class Manifest:
    """A decoded manifest: the head's fields as attributes (see the H_* keys), `firmware` None
    or (size, sha256, payload offset), `size` the manifest's own length (a release file's
    payload starts there). The file list is not held (40 entries are ~10 KB of heap on a
    device): files() decodes it again from the head bytes, one entry at a time. Nothing here is
    trustworthy until verify()/verify_file() returned it."""

    def __init__(self, data: bytes) -> None:
        r = Reader(data)
        n = _count(r, 0x80)
        head: dict = {}  # type: ignore[type-arg]
        files_at = -1
        nfiles = 0
        off = 0
        for _ in range(n):
            k = r.value(1)
            if not isinstance(k, int) or isinstance(k, bool):
                raise ProtocolError(BAD_TYPE, "key")
            if k in head:
                _bad("repeated")
            if k < 0 or H_KIND < k <= _LAST_KNOWN:
                _bad("key %d" % k)
            if k == H_FILES:  # walked and checked here, kept only as a position
                head[k] = None
                files_at = r.pos
                last = ""
                for _ in range(_count(r, 0x90)):
                    f = _entry(r, last)
                    last = f[0]
                    off += f[1]
                    nfiles += 1
            else:
                head[k] = r.value(1)
        if r.pos != len(data):
            raise ProtocolError(TRAILING_BYTES, "head")
        self._head = data
        self._files_at = files_at
        self.version = _uint(head.get(H_VERSION), "version")
        if self.version == 0:
            _bad("version")
        d = head.get(H_DISPLAY)
        if not isinstance(d, str) or not 0 < len(d) <= MAX_DISPLAY:
            _bad("display")
        self.display = d
        b = head.get(H_BOARD)
        if not _path_ok(b) or "/" in b:  # type: ignore[operator]
            _bad("board")
        self.board: str = b  # type: ignore[assignment]
        kind = head.get(H_KIND)
        if kind is not None and (not _path_ok(kind) or "/" in kind):
            _bad("kind")
        self.kind = kind
        if files_at < 0:
            _bad("files")
        self.nfiles = nfiles
        self.files_size = off
        fw = head.get(H_FIRMWARE)
        if fw is not None:
            if not isinstance(fw, list) or len(fw) != 2:
                _bad("firmware")
            fsize = _uint(fw[0], "firmware")
            fw = (fsize, _bin(fw[1], DIGEST_LEN, "firmware"), off)
            off += fsize
        self.firmware = fw
        self.total = _uint(head.get(H_TOTAL), "total")
        if self.total != off or off == 0:  # no release without bytes to install
            _bad("total")
        self.digest = _bin(head.get(H_DIGEST), DIGEST_LEN, "digest")
        c = _uint(head.get(H_CHUNK), "chunk", MAX_CHUNK)
        if c < MIN_CHUNK or c & (c - 1):
            _bad("chunk")
        self.chunk = c
        self.chunks = (self.total + c - 1) // c
        if self.chunks > MAX_CHUNKS:
            _bad("chunk")
        self.floor = _uint(head.get(H_FLOOR), "floor", self.version)
        self.expires = _uint(head.get(H_EXPIRES), "expires")
        self.key_id = _bin(head.get(H_KEY_ID), KEY_ID_LEN, "key id")
        nk = head.get(H_NEXT_KEY)
        self.next_key = None if nk is None else _bin(nk, ed25519.KEY_LEN, "next key")
        fr = head.get(H_FROM)
        self.min_from = 0 if fr is None else _uint(fr, "from", self.version - 1)
        cr = head.get(H_CREATED)
        self.created = None if cr is None else _uint(cr, "created")
        self.table_offset = PREFIX_LEN + len(data)
        self.signed_len = self.table_offset + DIGEST_LEN * self.chunks
        self.size = self.signed_len + SIG_LEN * (2 if self.next_key else 1)

    def files(self) -> "Iterator[tuple]":  # type: ignore[type-arg]
        """Each file as (path, size, sha256, payload offset), in payload order."""
        r = Reader(self._head, self._files_at)
        off = 0
        last = ""
        for _ in range(_count(r, 0x90)):
            f = _entry(r, last)
            last = f[0]
            yield (f[0], f[1], f[2], off)
            off += f[1]

    def chunk_span(self, i: int) -> tuple:  # type: ignore[type-arg]
        """(payload offset, length) of chunk i."""
        off = i * self.chunk
        return (off, min(self.chunk, self.total - off))


def _head(prefix: bytes, get: "Callable[[int, int], bytes]") -> Manifest:
    """Check the 8-byte prefix, read and decode the head with get(offset, n)."""
    if len(prefix) < PREFIX_LEN:
        raise ProtocolError(TRUNCATED, "prefix")
    if prefix[:4] != MAGIC:
        _bad("magic")
    if prefix[4] != FORMAT or prefix[5] != 0:
        raise ProtocolError(UNKNOWN_VERSION, "format")
    n = (prefix[6] << 8) | prefix[7]
    if n > MAX_HEAD:
        raise ProtocolError(TOO_BIG, "head")
    data = get(PREFIX_LEN, n)
    if len(data) != n:
        raise ProtocolError(TRUNCATED, "head")
    return Manifest(data)


def _open(get: "Callable[[int, int], bytes]", size: int) -> Manifest:
    m = _head(get(0, PREFIX_LEN), get)
    if size < m.size:
        raise ProtocolError(TRUNCATED, "signatures")
    return m


def parse(data: bytes) -> Manifest:
    """Decode without checking signatures or policy (for inspection). data may continue past
    the manifest (a release file: the payload follows); m.size says where it ends."""
    return _open(lambda o, n: data[o : o + n], len(data))


def _check_sig(m: Manifest, digest: bytes, sigs: bytes, key: bytes) -> None:
    if m.key_id != key_id(key):
        raise ProtocolError(WRONG_KEY, m.key_id.hex())
    msg = CONTEXT + digest
    ed25519.verify(key, msg, sigs[:SIG_LEN])
    if m.next_key is not None:  # the new key must have signed too: it exists and is held
        ed25519.verify(m.next_key, msg, sigs[SIG_LEN : 2 * SIG_LEN])


def check_policy(
    m: Manifest, board: str, now: int, floor: int = 0, current: int = 0, kind: object = None
) -> None:
    """The device-side rules, in this order (after the signature verified): board and class,
    expiry, anti-rollback floor, newer than installed, allowed jump."""
    if m.board != board or (m.kind is not None and m.kind != kind):
        raise ProtocolError(WRONG_BOARD, m.board)
    if now >= m.expires:
        raise ProtocolError(EXPIRED)
    if m.version <= floor:
        raise ProtocolError(BELOW_FLOOR, str(floor))
    if m.version <= current:
        raise ProtocolError(NOT_NEWER, str(current))
    if current < m.min_from:
        raise ProtocolError(JUMP_NOT_ALLOWED, str(m.min_from))


def verify_file(
    f: object,
    size: int,
    key: bytes,
    board: str,
    now: int,
    floor: int = 0,
    current: int = 0,
    kind: object = None,
    piece: int = 512,
) -> Manifest:
    """Check the manifest at the start of an open file (read(), seek()) of `size` bytes with
    the device's release key and state; return it or raise ProtocolError (check order in
    docs/PROTOCOL.md, "Release manifest"). Holds the head and one `piece` of the table at a
    time."""

    def get(o: int, n: int) -> bytes:
        f.seek(o)  # type: ignore[attr-defined]
        return f.read(n)  # type: ignore[attr-defined,no-any-return]

    m = _open(get, size)
    h = hashlib.sha256()
    o = 0
    while o < m.signed_len:
        n = min(piece, m.signed_len - o)
        h.update(get(o, n))
        o += n
    _check_sig(m, h.digest(), get(m.signed_len, m.size - m.signed_len), key)
    check_policy(m, board, now, floor, current, kind)
    return m


def verify(
    data: bytes,
    key: bytes,
    board: str,
    now: int,
    floor: int = 0,
    current: int = 0,
    kind: object = None,
) -> Manifest:
    """verify_file for a manifest held in memory (data may continue with the payload)."""
    m = _open(lambda o, n: data[o : o + n], len(data))
    digest = hashlib.sha256(data[: m.signed_len]).digest()
    _check_sig(m, digest, data[m.signed_len : m.size], key)
    check_policy(m, board, now, floor, current, kind)
    return m


def chunk_digest(m: Manifest, data: bytes, i: int) -> bytes:
    """Chunk i's SHA-256 from the table of manifest bytes `data` (a file's device reads it at
    m.table_offset + 32 * i instead)."""
    if not 0 <= i < m.chunks:
        _bad("chunk")
    o = m.table_offset + DIGEST_LEN * i
    return bytes(data[o : o + DIGEST_LEN])


def trusted_key_after(m: Manifest, key: bytes) -> bytes:
    """The release key a device holds once it has committed m: its next key when it names one
    (verify() has checked the next key's own signature), else the same key."""
    return m.next_key if m.next_key is not None else key
