"""A fixed, seeded corpus of 1,200 mutants of the device vectors (x2: as received, and re-sealed
with a valid tag so the parser rather than the MAC decides), decoded by tests/upy/mutate.py on:
CPython (with protocol's msgpack-C fast path and without it), MicroPython 64 KiB with protocol/
compiled by mpy-cross as on a device, and MicroPython from source. Only ProtocolError may ever
escape the decoder, and every run must name the same outcome for every mutant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from protocol.errors import CODES
from tests.support.upy import ROOT, run_upy
from tests.upy.build import compile_protocol

UPY = ROOT / "tests" / "upy"
SEEDS = ROOT / "tests" / "vectors" / "device.json"
COUNT = 1200
SEED = 20251123


def parse(stdout: str) -> tuple[list[list[str]], dict[str, object]]:
    lines = stdout.strip().splitlines()
    rows = [line.split() for line in lines[:-1]]
    return rows, json.loads(lines[-1])


def run_cpython(*extra: str) -> tuple[list[list[str]], dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(UPY)]))
    proc = subprocess.run(
        [sys.executable, str(UPY / "mutate.py"), str(SEEDS), str(COUNT), str(SEED), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return parse(proc.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[list[str]], dict]]:  # type: ignore[type-arg]
    lib = compile_protocol(tmp_path_factory.mktemp("mpy"))
    args = (str(SEEDS), str(COUNT), str(SEED))
    return {
        "cpython": run_cpython(),
        "cpython-pure": run_cpython("pure"),
        "upy-64k-mpy": parse(
            run_upy(UPY / "mutate.py", *args, heap="64K", path=[lib, UPY]).check().stdout
        ),
        "upy-source": parse(
            run_upy(UPY / "mutate.py", *args, heap="256K", path=[UPY]).check().stdout
        ),
    }


def outcomes(rows: list[list[str]]) -> Counter[str]:
    return Counter(o.split(":")[0] for r in rows for o in r[2:])


def test_corpus_is_fixed_and_large(runs: dict) -> None:  # type: ignore[type-arg]
    digests = {name: summary["corpus_sha256"] for name, (_, summary) in runs.items()}
    assert len(set(digests.values())) == 1, digests  # every interpreter built the same mutants
    rows, summary = runs["cpython"]
    assert summary["count"] == COUNT == len(rows) and COUNT >= 1000
    seen = outcomes(rows)
    # The corpus reaches deep into the parser, not just the MAC: most error names show up.
    assert {
        "truncated",
        "bad_type",
        "too_big",
        "trailing_bytes",
        "bad_field",
        "bad_tag",
        "ok",
    } <= set(seen)


@pytest.mark.parametrize("name", ["cpython", "cpython-pure", "upy-64k-mpy", "upy-source"])
def test_only_protocol_errors_escape(runs: dict, name: str) -> None:  # type: ignore[type-arg]
    rows, _ = runs[name]
    bad = [
        r for r in rows for o in r[2:] if not (o in CODES or o.startswith("ok:")) or "CRASH" in o
    ]
    assert not bad, f"{name}: decoder let something other than ProtocolError out: {bad[:10]}"
    enc = [r for r in rows for o in r[2:] if o.startswith("ok:enc-")]
    assert not enc, f"{name}: decoded messages the encoder refuses: {enc[:10]}"


@pytest.mark.parametrize("name", ["cpython", "upy-64k-mpy", "upy-source"])
def test_same_outcome_for_every_mutant(runs: dict, name: str) -> None:  # type: ignore[type-arg]
    """Against the pure codec on CPython: the fast path and MicroPython must both agree with it."""
    ref, _ = runs["cpython-pure"]
    rows, _ = runs[name]
    diff = [(a, b) for a, b in zip(ref, rows, strict=True) if a != b]
    assert not diff, f"{len(diff)} mutants differ from cpython-pure, e.g. {diff[:5]}"


def test_mutants_of_a_missing_seed_file_fail_loudly(tmp_path: Path) -> None:
    """The harness itself can fail: a seed file that is not there is an error, not an empty pass."""
    res = run_upy(UPY / "mutate.py", str(tmp_path / "none.json"), "10", heap="256K", path=[UPY])
    assert res.returncode != 0
