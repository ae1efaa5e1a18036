"""Device keys at rest: wrapped with AES-256-GCM under a master key that never enters the
database (it lives in a file or the environment). The device id is the associated data, so a
wrapped key copied onto another device's row does not open."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.config import KeysConfig
from controller.errors import KeyWrapError

MASTER_LEN = 32
DEVICE_KEY_LEN = 32
_NONCE = 12
_FORMAT = b"\x01"  # first byte of a wrapped key: format version


class MasterKey:
    """Wraps and unwraps device keys. Holds the key only in memory; repr never shows it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_LEN:
            raise KeyWrapError(f"the master key is {MASTER_LEN} bytes (64 hex digits)")
        self._aead = AESGCM(key)
        self._kdf = hmac.new(key, b"idufleet subkeys v1", hashlib.sha256).digest()

    def subkey(self, label: str) -> bytes:
        """A 32-byte key for one purpose (e.g. "operator tokens"), derived with HMAC-SHA256 so
        it never reveals the master key or another purpose's key."""
        return hmac.new(self._kdf, label.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "MasterKey(***)"

    def wrap(self, device_id: str, device_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return _FORMAT + nonce + self._aead.encrypt(nonce, device_key, device_id.encode())

    def unwrap(self, device_id: str, wrapped: bytes) -> bytes:
        """Raises KeyWrapError when the blob was not made by this master key for this device."""
        if len(wrapped) < 1 + _NONCE + 16 or wrapped[:1] != _FORMAT:
            raise KeyWrapError(f"wrapped key of {device_id} is malformed; re-provision the device")
        nonce = wrapped[1 : 1 + _NONCE]
        try:
            return self._aead.decrypt(nonce, wrapped[1 + _NONCE :], device_id.encode())
        except InvalidTag:
            raise KeyWrapError(
                f"key of {device_id} does not open with this master key; "
                "check keys.master_key_file / IDUFLEET_KEYS_MASTER_KEY"
            ) from None


def new_device_key() -> bytes:
    return secrets.token_bytes(DEVICE_KEY_LEN)


def _parse_hex(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyWrapError(f"{where} is not hex; it holds 64 hex digits") from None
    if len(key) != MASTER_LEN:
        raise KeyWrapError(f"{where} holds {len(key)} bytes; the master key is {MASTER_LEN}")
    return key


def load_master(cfg: KeysConfig, create: bool = False) -> MasterKey:
    """The master key from config (environment value first, then the file). With create=True a
    missing file is generated with owner-only permissions (first start, demo, tests)."""
    if cfg.master_key:
        return MasterKey(_parse_hex(cfg.master_key, "IDUFLEET_KEYS_MASTER_KEY"))
    path = Path(cfg.master_key_file)
    if not path.exists():
        if not create:
            raise KeyWrapError(
                f"master key file {path} not found; create one with `idufleet init` "
                "(or `idufleet serve --init`) or set IDUFLEET_KEYS_MASTER_KEY"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(MASTER_LEN) + "\n")
    return MasterKey(_parse_hex(path.read_text(), str(path)))
