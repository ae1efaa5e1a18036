"""Signed releases on the operator's machine (docs/OTA.md): the release key pair, building a
release file (manifest + payload) and checking one. Signing uses the `cryptography` package;
the manifest format and every device-side check are protocol/manifest.py's, so what
`release inspect` accepts is exactly what a device accepts. The CLI is tools/release_cmds.py.

A release file is the signed manifest immediately followed by the payload: every file of the
agent in the manifest's order, then the firmware image when there is one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol import manifest as MF
from protocol.codec import packb
from protocol.errors import ProtocolError

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
DEFAULT_CHUNK = 2048  # one chunk per `ota` message (channel limit 2304 B, docs/PROTOCOL.md)
DEFAULT_EXPIRY_DAYS = 30
MAX_VERSION_PART = 999


class ReleaseError(Exception):
    """A release cannot be built or does not check; `code` names why (a manifest refusal code
    from protocol.manifest, or one of the payload codes below), the message says the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Payload refusal codes (the manifest's own are protocol.manifest.CODES and protocol.errors).
PAYLOAD_SIZE = "payload_size"
PAYLOAD_DIGEST = "payload_digest"
CHUNK_DIGEST = "chunk_digest"
FILE_DIGEST = "file_digest"
KEY_FILE = "key_file"
BAD_VERSION = "bad_version"


# --------------------------------------------------------------------------- keys
def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create path with mode (never replacing a file), all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if path exists, even if it appeared meanwhile
    except FileExistsError:
        raise ReleaseError(KEY_FILE, f"{path} exists: remove it or choose another path") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def keygen(private_path: Path) -> tuple[Path, bytes]:
    """A new Ed25519 release key: private_path (PKCS#8 PEM, mode 0600) and private_path with
    suffix .pub (the 32-byte public key in hex: what device bundles carry). Refuses to replace
    either file. Returns (public key path, public key)."""
    private_path = Path(private_path)
    public_path = private_path.with_suffix(PUBLIC_SUFFIX)
    if public_path == private_path:
        raise ReleaseError(KEY_FILE, f"{private_path} ends in {PUBLIC_SUFFIX}: name it *.key")
    for p in (private_path, public_path):
        if p.exists():
            raise ReleaseError(KEY_FILE, f"{p} exists: remove it or choose another path")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = raw_public(key)
    _write_new(private_path, pem, 0o600)
    try:
        _write_new(public_path, (pub.hex() + "\n").encode(), 0o644)
    except ReleaseError:
        private_path.unlink()
        raise
    return public_path, pub


def load_private(path: Path) -> Ed25519PrivateKey:
    """The release private key; refused when others may read it (like ssh does)."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise ReleaseError(KEY_FILE, f"cannot read key {path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ReleaseError(
            KEY_FILE, f"{path} is readable by others: chmod 600 {path} (and consider a new key)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ReleaseError(KEY_FILE, f"{path} is not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(KEY_FILE, f"{path} is not an Ed25519 key: use `release keygen`")
    return key


def parse_public(text: str) -> bytes:
    """A public key given as 64 hex digits, or the path of a .pub file holding them."""
    t = text.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", t):
        try:
            t = Path(t).read_text().strip()
        except OSError as e:
            raise ReleaseError(
                KEY_FILE, f"{text}: not 64 hex digits nor a readable .pub file ({e.strerror})"
            ) from None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", t):
        raise ReleaseError(KEY_FILE, f"{text}: a release public key is 64 hex digits")
    pub = bytes.fromhex(t)
    try:
        from protocol.ed25519 import decode_point

        decode_point(pub)
    except ProtocolError:
        raise ReleaseError(KEY_FILE, f"{text}: not a valid Ed25519 public key") from None
    return pub


# --------------------------------------------------------------------------- versions
def parse_version(text: str) -> tuple[int, str]:
    """`42` -> (42, "42"); `1.4.2` -> (1004002, "1.4.2"): the monotonic number and its display.
    Dotted versions have at most three parts, each 0-999."""
    t = text.strip()
    if re.fullmatch(r"[0-9]+", t):
        n = int(t)
    elif re.fullmatch(r"[0-9]+(\.[0-9]+){1,2}", t):
        parts = [int(x) for x in t.split(".")] + [0]
        if any(p > MAX_VERSION_PART for p in parts[1:3]):
            raise ReleaseError(BAD_VERSION, f"version {t}: minor and patch are 0-999")
        n = parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]
    else:
        raise ReleaseError(BAD_VERSION, f"version {t!r}: use an integer (42) or 1.4.2")
    if not 0 < n <= MF.MAX_U32 or len(t) > MF.MAX_DISPLAY:
        raise ReleaseError(BAD_VERSION, f"version {t}: must be 1..{MF.MAX_U32} as a number")
    return n, t


# --------------------------------------------------------------------------- building
@dataclass
class Spec:
    """What a release says besides its bytes: the manifest head's fields (docs/PROTOCOL.md,
    "Release manifest")."""

    version: int
    display: str
    board: str
    expires: int
    floor: int | None = None  # None: the version itself
    min_from: int = 0
    kind: str | None = None
    chunk: int = DEFAULT_CHUNK
    created: int | None = None
    extra: dict[int, Any] = field(default_factory=dict)  # head extension keys (>= 32)


def _sign(key: Ed25519PrivateKey, digest: bytes) -> bytes:
    return key.sign(MF.CONTEXT + digest)


def build_manifest(
    spec: Spec,
    files: list[tuple[str, bytes]],
    firmware: bytes | None,
    key: Ed25519PrivateKey,
    next_key: Ed25519PrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """(manifest, payload) for the files (sorted by path here) and the optional image, signed
    with key (and with next_key when the release hands over to it)."""
    files = sorted(files)
    payload = b"".join(d for _, d in files) + (firmware or b"")
    head: dict[int, Any] = {
        MF.H_VERSION: spec.version,
        MF.H_DISPLAY: spec.display,
        MF.H_BOARD: spec.board,
        MF.H_FILES: [[p, len(d), hashlib.sha256(d).digest()] for p, d in files],
        MF.H_TOTAL: len(payload),
        MF.H_DIGEST: hashlib.sha256(payload).digest(),
        MF.H_CHUNK: spec.chunk,
        MF.H_FLOOR: spec.version if spec.floor is None else spec.floor,
        MF.H_EXPIRES: spec.expires,
        MF.H_KEY_ID: MF.key_id(raw_public(key)),
    }
    if firmware is not None:
        head[MF.H_FIRMWARE] = [len(firmware), hashlib.sha256(firmware).digest()]
    if next_key is not None:
        head[MF.H_NEXT_KEY] = raw_public(next_key)
    if spec.min_from:
        head[MF.H_FROM] = spec.min_from
    if spec.created is not None:
        head[MF.H_CREATED] = spec.created
    if spec.kind is not None:
        head[MF.H_KIND] = spec.kind
    head.update(spec.extra)
    try:
        body = packb(head, MF.MAX_HEAD)
    except ProtocolError as e:
        raise ReleaseError(e.code, f"manifest head does not fit the format: {e}") from None
    table = b"".join(
        hashlib.sha256(payload[o : o + spec.chunk]).digest()
        for o in range(0, len(payload), spec.chunk)
    )
    signed = MF.MAGIC + bytes([MF.FORMAT, 0]) + len(body).to_bytes(2, "big") + body + table
    digest = hashlib.sha256(signed).digest()
    sigs = _sign(key, digest) + (_sign(next_key, digest) if next_key is not None else b"")
    out = signed + sigs
    try:  # our own decoder must accept what we wrote, or nothing is written
        m = MF.parse(out)
    except ProtocolError as e:
        raise ReleaseError(e.code, f"this release would be refused by devices: {e}") from None
    assert m.size == len(out)
    return out, payload


def board_name(board: str) -> str:
    """The board table's name for board (aliases resolved); ReleaseError naming the choices."""
    from tools import flash as F

    try:
        return F.board(board).name
    except F.FlashError as e:
        raise ReleaseError(e.code, str(e)) from None


def takes_image(board: str) -> bool:
    """Whether the board has a firmware partition a release can carry an image for."""
    from tools import flash as F

    return F.board(board).chip is not None


def agent_files(board: str) -> list[tuple[str, bytes]]:
    """The agent as the flash tool installs it (tools/flash.py): firmware/ and protocol/ compiled
    with mpy-cross for the board's architecture (firmware/boards.py), main.py as source. Paths
    are the device's (relative to its filesystem root)."""
    from tools import flash as F

    try:
        b = F.board(board)
        items = F.compile_sources(F.source_files(), b)
    except F.FlashError as e:
        raise ReleaseError(e.code, str(e)) from None
    return [(i.dest, i.data) for i in items]


def check_firmware(path: Path, board: str) -> bytes:
    """The image bytes, after the flash tool's own checks (ESP image for this chip)."""
    from tools import flash as F

    try:
        F.check_image(Path(path), F.board(board))
    except F.FlashError as e:
        raise ReleaseError(e.code, str(e)) from None
    return Path(path).read_bytes()


def write_release(path: Path, manifest: bytes, payload: bytes) -> Path:
    """manifest || payload into a new file (never replacing one), all or nothing."""
    _write_new(Path(path), manifest + payload, 0o644)
    return Path(path)


# --------------------------------------------------------------------------- checking
def check_payload(m: MF.Manifest, manifest: bytes, payload: bytes) -> None:
    """The payload matches the manifest: size, every chunk (as a device checks them while
    downloading: the first bad one is named), every file, the overall digest."""
    if len(payload) != m.total:
        raise ReleaseError(
            PAYLOAD_SIZE, f"payload is {len(payload)} bytes, the manifest says {m.total}"
        )
    for i in range(m.chunks):
        off, n = m.chunk_span(i)
        if hashlib.sha256(payload[off : off + n]).digest() != MF.chunk_digest(m, manifest, i):
            raise ReleaseError(CHUNK_DIGEST, f"chunk {i} (bytes {off}-{off + n}) differs")
    for path, size, digest, off in m.files():
        if hashlib.sha256(payload[off : off + size]).digest() != digest:
            raise ReleaseError(FILE_DIGEST, f"{path} differs from its manifest SHA-256")
    if m.firmware is not None:
        size, digest, off = m.firmware
        if hashlib.sha256(payload[off : off + size]).digest() != digest:
            raise ReleaseError(FILE_DIGEST, "the firmware image differs from its SHA-256")
    if hashlib.sha256(payload).digest() != m.digest:  # implied by the above unless a bug
        raise ReleaseError(PAYLOAD_DIGEST, "payload SHA-256 differs from the manifest's")


def open_release(data: bytes, public: bytes | None = None) -> tuple[MF.Manifest, bytes]:
    """Parse (and with a public key verify the signatures of) a release file; check its payload.
    Policy (board, expiry, floor) is the device's and is reported, not enforced, by inspect."""
    try:
        m = MF.parse(data)
        if public is not None:
            # the device's signature check, without its policy: a far-future clock and no floor
            MF.verify(data, public, m.board, 0, current=m.min_from, kind=m.kind)
    except ProtocolError as e:
        raise ReleaseError(e.code, f"manifest refused: {e}") from None
    check_payload(m, data[: m.size], data[m.size :])
    return m, data[m.size :]


def describe(m: MF.Manifest, now: int | None = None) -> list[str]:
    """Human lines for `release inspect`."""
    now = int(time.time()) if now is None else now
    left = m.expires - now
    exp = f"in {left // 86400} d {left % 86400 // 3600} h" if left > 0 else "EXPIRED"
    lines = [
        f"version      {m.display} (#{m.version})",
        f"board        {m.board}" + (f" / {m.kind}" if m.kind else ""),
        f"files        {m.nfiles}, {m.files_size} bytes",
    ]
    if m.firmware is not None:
        lines.append(f"firmware     {m.firmware[0]} bytes, sha256 {m.firmware[1].hex()}")
    lines += [
        f"payload      {m.total} bytes, sha256 {m.digest.hex()}",
        f"chunks       {m.chunks} x {m.chunk} bytes",
        f"floor        {m.floor}" + (f"; installs only over >= {m.min_from}" if m.min_from else ""),
        f"expires      {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(m.expires))} ({exp})",
        f"key id       {m.key_id.hex()}",
    ]
    if m.next_key is not None:
        lines.append(f"next key     {m.next_key.hex()} (id {MF.key_id(m.next_key).hex()})")
    if m.created is not None:
        lines.append(f"created      {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(m.created))}")
    lines.append(f"manifest     {m.size} bytes")
    return lines
