"""OTA transfer bodies (docs/PROTOCOL.md section 7, "9 OTA"): build and check the offer, data,
gone, request and status bodies. Pure; imports only protocol.messages and protocol.errors. The
controller builds and checks with it; the device writes the same keys as const() copies
(firmware/ota.py, checked by tests/test_firmware_heap.py) so it never loads these tables.

Every check raises ProtocolError(BAD_FIELD, what) on a body the spec does not allow, so a
receiver refuses one named thing rather than guessing."""

from protocol import messages as M
from protocol.errors import BAD_FIELD, ProtocolError

RELEASE_ID_LEN = 8
OFFER_OP = 64  # the op an OFFER is recorded under in the commands table (it travels as type 9)
# STATUS
O_STATE = 2  # uint: OS_* below
O_RESULT = 3  # uint: OR_* below
O_DONE = 4  # uint: payload chunks verified and staged
O_TOTAL = 5  # uint: payload chunks in the release
O_DETAIL = 6  # str, opt: the refusal's name (a protocol.manifest code)
OS_IDLE = 0
OS_OFFERED = 1
OS_DOWNLOADING = 2
OS_DOWNLOADED = 3
OS_INSTALLING = 4  # later slices
OS_PENDING_VERIFY = 5
OS_COMMITTED = 6
OS_ROLLED_BACK = 7
OS_FAILED = 8
# Result codes: 0-9 are LwM2M object 5's Update Result (/5/0/5) with the same meaning; 10 and up
# name each manifest refusal (protocol.manifest) so a controller never parses detail text.
OR_NONE = 0  # LwM2M 0: initial / in progress
OR_OK = 1  # LwM2M 1: success (for this slice: downloaded and every byte checked)
OR_NO_STORAGE = 2  # LwM2M 2: not enough flash for the staging file
OR_OUT_OF_RAM = 3  # LwM2M 3: MemoryError during the transfer
OR_CONNECTION_LOST = 4  # LwM2M 4: the controller stopped answering (GONE, or retries exhausted)
OR_INTEGRITY = 5  # LwM2M 5: manifest digest or payload digest mismatch after re-fetching
OR_UNSUPPORTED = 6  # LwM2M 6: a manifest this device cannot use (bad field, format)
OR_FAILED = 8  # LwM2M 8: anything else
OR_BAD_SIGNATURE = 10
OR_WRONG_KEY = 11
OR_WRONG_BOARD = 12
OR_EXPIRED = 13
OR_BELOW_FLOOR = 14
OR_NOT_NEWER = 15
OR_JUMP_NOT_ALLOWED = 16
STATES = {
    OS_IDLE: "idle",
    OS_OFFERED: "offered",
    OS_DOWNLOADING: "downloading",
    OS_DOWNLOADED: "downloaded",
    OS_INSTALLING: "installing",
    OS_PENDING_VERIFY: "pending_verify",
    OS_COMMITTED: "committed",
    OS_ROLLED_BACK: "rolled_back",
    OS_FAILED: "failed",
}
RESULTS = {
    OR_NONE: "none",
    OR_OK: "ok",
    OR_NO_STORAGE: "no_storage",
    OR_OUT_OF_RAM: "out_of_ram",
    OR_CONNECTION_LOST: "connection_lost",
    OR_INTEGRITY: "integrity",
    OR_UNSUPPORTED: "unsupported",
    OR_FAILED: "failed",
    OR_BAD_SIGNATURE: "bad_signature",
    OR_WRONG_KEY: "wrong_key",
    OR_WRONG_BOARD: "wrong_board",
    OR_EXPIRED: "expired",
    OR_BELOW_FLOOR: "below_floor",
    OR_NOT_NEWER: "not_newer",
    OR_JUMP_NOT_ALLOWED: "jump_not_allowed",
}
_U32 = 0xFFFFFFFF


def _uint(v: object, what: str, lo: int = 0, hi: int = _U32) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ProtocolError(BAD_FIELD, what)
    return v


def _bin(v: object, n: int, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != n:
        raise ProtocolError(BAD_FIELD, what)
    return v


def release_id(manifest_sha256: bytes) -> bytes:
    """A release's id on the wire: the first 8 bytes of its manifest's SHA-256."""
    return bytes(manifest_sha256[:RELEASE_ID_LEN])


def offer(
    manifest_sha256: bytes, version: int, display: str, size: int, piece: int, expires: int
) -> dict:  # type: ignore[type-arg]
    return {
        M.O_PHASE: M.OP_OFFER,
        M.O_RELEASE: release_id(manifest_sha256),
        M.O_VERSION: version,
        M.O_DISPLAY: display,
        M.O_MANIFEST_SIZE: size,
        M.O_MANIFEST_SHA256: bytes(manifest_sha256),
        M.O_PIECE: piece,
        M.O_EXPIRES: expires,
    }


def data(rid: bytes, part: int, index: int, chunk: bytes, offset: int = 0) -> dict:  # type: ignore[type-arg]
    return {
        M.O_PHASE: M.OP_DATA,
        M.O_RELEASE: rid,
        M.O_PART: part,
        M.O_INDEX: index,
        M.O_DATA: chunk,
        M.O_OFFSET: offset,
    }


def gone(rid: bytes) -> dict:  # type: ignore[type-arg]
    return {M.O_PHASE: M.OP_GONE, M.O_RELEASE: rid}


def request(rid: bytes, part: int, index: int, count: int, split: int = 0) -> dict:  # type: ignore[type-arg]
    b = {
        M.O_PHASE: M.OP_REQUEST,
        M.O_RELEASE: rid,
        M.O_PART: part,
        M.O_INDEX: index,
        M.O_COUNT: count,
    }
    if split:
        b[M.O_SPLIT] = split
    return b


def status(
    rid: bytes, state: int, result: int, done: int, total: int, detail: str | None = None
) -> dict:  # type: ignore[type-arg]
    b = {
        M.O_PHASE: M.OP_STATUS,
        M.O_RELEASE: rid,
        O_STATE: state,
        O_RESULT: result,
        O_DONE: done,
        O_TOTAL: total,
    }
    if detail is not None:
        b[O_DETAIL] = detail
    return b


def check_uplink(body: object) -> tuple:  # type: ignore[type-arg]
    """An uplink OTA body (on `otr`): ("request", rid, part, index, count, split: 0 when
    absent) or ("status", rid,
    state, result, done, total, detail). Raises ProtocolError(BAD_FIELD)."""
    if not isinstance(body, dict):
        raise ProtocolError(BAD_FIELD, "body")
    phase = body.get(M.O_PHASE)
    rid = _bin(body.get(M.O_RELEASE), RELEASE_ID_LEN, "release")
    if phase == M.OP_REQUEST:
        part = _uint(body.get(M.O_PART), "part", 0, M.PART_PAYLOAD)
        index = _uint(body.get(M.O_INDEX), "index")
        count = _uint(body.get(M.O_COUNT), "count", 1, M.OTA_MAX_WINDOW)
        split = body.get(M.O_SPLIT)
        split = 0 if split is None else _uint(split, "split", 64, 4096)
        return ("request", rid, part, index, count, split)
    if phase == M.OP_STATUS:
        state = _uint(body.get(O_STATE), "state", 0, 255)
        if state not in STATES:
            raise ProtocolError(BAD_FIELD, "state")
        result = _uint(body.get(O_RESULT), "result", 0, 255)
        done = _uint(body.get(O_DONE), "done")
        total = _uint(body.get(O_TOTAL), "total")
        detail = body.get(O_DETAIL)
        if detail is not None and (not isinstance(detail, str) or len(detail) > 32):
            raise ProtocolError(BAD_FIELD, "detail")
        return ("status", rid, state, result, done, total, detail)
    raise ProtocolError(BAD_FIELD, "phase")


def check_downlink(body: object) -> tuple:  # type: ignore[type-arg]
    """A downlink OTA body (on `ota`): ("offer", rid, version, display, size, sha256, piece,
    expires), ("data", rid, part, index, offset, bytes) or ("gone", rid). Raises ProtocolError."""
    if not isinstance(body, dict):
        raise ProtocolError(BAD_FIELD, "body")
    phase = body.get(M.O_PHASE)
    rid = _bin(body.get(M.O_RELEASE), RELEASE_ID_LEN, "release")
    if phase == M.OP_OFFER:
        version = _uint(body.get(M.O_VERSION), "version", 1)
        display = body.get(M.O_DISPLAY)
        if not isinstance(display, str) or not 0 < len(display) <= 32:
            raise ProtocolError(BAD_FIELD, "display")
        size = _uint(body.get(M.O_MANIFEST_SIZE), "size", 1)
        digest = _bin(body.get(M.O_MANIFEST_SHA256), 32, "sha256")
        if release_id(digest) != rid:
            raise ProtocolError(BAD_FIELD, "release")
        piece = _uint(body.get(M.O_PIECE), "piece", 256, 4096)
        if piece & (piece - 1):
            raise ProtocolError(BAD_FIELD, "piece")
        expires = _uint(body.get(M.O_EXPIRES), "expires")
        return ("offer", rid, version, display, size, digest, piece, expires)
    if phase == M.OP_DATA:
        part = _uint(body.get(M.O_PART), "part", 0, M.PART_PAYLOAD)
        index = _uint(body.get(M.O_INDEX), "index")
        chunk = body.get(M.O_DATA)
        if not isinstance(chunk, bytes) or not 0 < len(chunk) <= 4096:
            raise ProtocolError(BAD_FIELD, "data")
        offset = _uint(body.get(M.O_OFFSET), "offset", 0, 4095)
        return ("data", rid, part, index, offset, chunk)
    if phase == M.OP_GONE:
        return ("gone", rid)
    raise ProtocolError(BAD_FIELD, "phase")
