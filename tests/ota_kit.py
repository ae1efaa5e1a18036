"""Helpers for the OTA tests and benchmark: releases made with the real release code, and a
CPython stand-in for a device's OTA side (tests/test_ota_server.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tools import release as R

T_EXPIRES = 4102444800  # 2100-01-01


def release_key(seed: int = 1) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def make_release(
    out: Path,
    files: list[tuple[str, bytes]] | None = None,
    version: str = "1.0.1",
    board: str = "sim",
    key: Ed25519PrivateKey | None = None,
    expires: int = T_EXPIRES,
    chunk: int = R.DEFAULT_CHUNK,
    size: int = 0,
) -> Path:
    """A signed release file: the real agent for `board` (files None), or the files given, or
    `size` bytes of seeded random data in 8 files."""
    if files is None and size:
        rnd = hashlib.sha256(b"seed").digest()
        blob = b"".join(
            hashlib.sha256(rnd + i.to_bytes(4, "big")).digest() for i in range(size // 32 + 1)
        )[:size]
        step = size // 8
        files = [
            (f"lib/f{i}.bin", blob[i * step : (i + 1) * step if i < 7 else size]) for i in range(8)
        ]
    if files is None:
        files = R.agent_files(board)
    v, display = R.parse_version(version)
    spec = R.Spec(v, display, board, expires, chunk=chunk, created=int(time.time()))
    manifest, payload = R.build_manifest(spec, files, None, key or release_key())
    if out.exists():
        os.unlink(out)
    return R.write_release(out, manifest, payload)


def short_wait(flash: Path, ms: int = 1000) -> Path:
    """Set broker.wait_ms in the device's config.json: how long the agent waits for an answer
    from the broker, and for an OTA item before asking again (firmware/ota.py)."""
    import json

    p = flash / "config.json"
    cfg = json.loads(p.read_text())
    cfg["broker"]["wait_ms"] = ms
    p.write_text(json.dumps(cfg))
    return flash
