"""The release vectors (tests/vectors/release/*.json: RFC 8032 Ed25519 and signed manifests, valid
and invalid) hold on CPython, on MicroPython from source, and on MicroPython in a 64 KiB heap
with protocol/ compiled by mpy-cross, reading each manifest from a file as a device reads one
from flash. Our Ed25519 and SHA-512 agree with `cryptography` and hashlib on random inputs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import ed25519
from protocol import manifest as MF
from protocol.errors import CODES, ProtocolError
from protocol.release_vectors import check
from protocol.sha512 import sha512
from tests.support.upy import ROOT, run_upy
from tests.upy.build import compile_protocol
from tests.upy.common import vectors
from tools.release import raw_public

RELEASE = ROOT / "tests" / "vectors" / "release"
UPY = ROOT / "tests" / "upy"
FILES = ["ed25519", "manifest"]
ALL = [(f, v) for f in FILES for v in json.loads((RELEASE / (f + ".json")).read_text())]
IDS = [f + "/" + v["name"] for f, v in ALL]
MANIFESTS = [v for f, v in ALL if f == "manifest"]


def expected(vec: dict[str, Any]) -> dict[str, Any]:
    return {k: vec[k] for k in ("ok", "fields", "error") if k in vec}


def test_release_vectors_cover_every_refusal_and_match_the_generator() -> None:
    names = [v["name"] for _, v in ALL]
    assert len(names) == len(set(names))
    errors = {v["error"] for v in MANIFESTS if "error" in v}
    assert set(MF.CODES) <= errors
    assert {"truncated", "bad_field", "bad_type", "too_big", "trailing_bytes"} <= errors
    assert {"unknown_version", "expired"} <= errors and errors <= set(CODES) | set(MF.CODES)
    assert sum("fields" in v for v in MANIFESTS) >= 8
    rfc = [v for f, v in ALL if v["name"].startswith("rfc8032_test") and "error" not in v]
    assert len(rfc) == 5 and all(v.get("ok") for v in rfc)
    for f in FILES:
        path = RELEASE / (f + ".json")
        assert list(vectors(str(path))) == json.loads(path.read_text())
    gen = ROOT / "tests" / "vectors" / "generate_release.py"
    proc = subprocess.run(
        [sys.executable, str(gen), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("file", "vec"), ALL, ids=IDS)
def test_release_vector_on_cpython(file: str, vec: dict[str, Any], tmp_path: Path) -> None:
    assert check(vec) == expected(vec)
    if file == "manifest":  # the streaming path a device uses gives the same outcome
        p = tmp_path / "m.bin"
        p.write_bytes(bytes.fromhex(vec["manifest_hex"]))
        assert check(vec, str(p)) == expected(vec)


def _upy(args: list[str], heap: str, path: list[Path]) -> dict[str, Any]:
    res = run_upy(UPY / "run_release_vectors.py", *args, heap=heap, path=path, timeout=180)
    out: dict[str, Any] = {}
    for line in res.check().stdout.splitlines():
        d = json.loads(line)
        out[d.pop("name")] = d
    return out


@pytest.fixture(scope="module")
def upy_from_source() -> dict[str, Any]:
    return _upy([str(RELEASE / (f + ".json")) for f in FILES], "256K", [UPY])


@pytest.fixture(scope="module")
def upy_device_mpy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """protocol/ as .mpy, 64 KiB heap, each manifest read from a file with verify_file: the
    JSON lines carry the device state only (a realistic manifest and its expected fields in one
    line would not fit a 64 KiB heap; a device never holds either)."""
    lib = compile_protocol(tmp_path_factory.mktemp("mpy"))
    flash = tmp_path_factory.mktemp("flash")
    lines = []
    for v in MANIFESTS:
        (flash / (v["name"] + ".bin")).write_bytes(bytes.fromhex(v["manifest_hex"]))
        state = {k: x for k, x in v.items() if k != "manifest_hex" and k not in expected(v)}
        lines.append(json.dumps(state))
    stripped = flash / "manifests.json"
    stripped.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return _upy(
        ["--flash", str(flash), str(stripped), str(RELEASE / "ed25519.json")], "64K", [lib, UPY]
    )


@pytest.mark.parametrize(("file", "vec"), ALL, ids=IDS)
def test_release_vector_on_micropython(
    upy_from_source: dict[str, Any], file: str, vec: dict[str, Any]
) -> None:
    assert upy_from_source.get(vec["name"]) == expected(vec)


@pytest.mark.parametrize(("file", "vec"), ALL, ids=IDS)
def test_release_vector_on_micropython_64k_mpy_from_flash(
    upy_device_mpy: dict[str, Any], file: str, vec: dict[str, Any]
) -> None:
    assert upy_device_mpy.get(vec["name"]) == expected(vec)


def test_ed25519_agrees_with_cryptography_on_random_keys_and_tampering() -> None:
    rng = random.Random(11)
    for i in range(40):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        pub = raw_public(key)
        msg = rng.randbytes(rng.choice([0, 1, 47, 111, 112, 200]))
        sig = key.sign(msg)
        ed25519.verify(pub, msg, sig)
        bad = bytearray(sig)
        bad[i % 64] ^= 1 << (i % 8)
        with pytest.raises(ProtocolError) as e:
            ed25519.verify(pub, msg, bytes(bad))
        assert e.value.code == "bad_signature"
        with pytest.raises(ProtocolError):
            ed25519.verify(pub, msg + b"x", sig)


def test_sha512_matches_hashlib_across_block_boundaries() -> None:
    for n in (0, 1, 55, 111, 112, 127, 128, 129, 239, 240, 256, 1000):
        data = os.urandom(n)
        assert sha512(data).digest() == hashlib.sha512(data).digest(), n
        h = sha512()
        for i in range(0, n, 7):
            h.update(data[i : i + 7])
        assert h.digest() == hashlib.sha512(data).digest(), n


def test_sha512_on_micropython_matches_hashlib() -> None:
    lengths = [0, 3, 111, 112, 128, 300]
    code = (
        "from protocol.sha512 import sha512\n"
        f"for n in {lengths}:\n"
        "    print(sha512(bytes(i % 251 for i in range(n))).digest().hex())\n"
    )
    out = run_upy(code, heap="64K").check().stdout.split()
    assert out == [hashlib.sha512(bytes(i % 251 for i in range(n))).hexdigest() for n in lengths]
