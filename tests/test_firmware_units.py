"""The firmware's sans-I/O parts (MQTT codec, offline ring bookkeeping, backoff, crash-loop rule,
config validation) checked against golden values on CPython AND on the real micropython binary."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.upy import ROOT, run_upy

HERE = Path(__file__).parent / "firmware"
FIRMWARE = ROOT / "firmware"

GOLDEN = {
    # CONNECT: flags 0x8c = username, will QoS 1, will flag; keepalive 60
    "connect_will_user": "101f00044d515454048c003c000461702d310003742f6400020102000461702d31",
    # flags 0xc2 = username, password, clean session; remaining length 26
    "connect_clean_pw": "101a00044d51545404c2003c000461702d31000461702d3100027077",
    "publish_q1_dup": "3a0c0003612f62000a",
    "publish_q0_retain": "310a0003612f62",
    "publish_varlen2": "30cb01000174",
    "publish_varlen3": "30a39c01000174",
    "puback": "40020102",
    "subscribe": "820b0001000161010002626301",
    "pingreq": "c000",
    "disconnect": "e000",
    "parse_stream": "20:0100|90:000101|pub:a/b:7:xyz",
    "parse_oversize": "d0:1",
    "parse_bad_length": "refused",
    "ring_push": "[0, 1, 2, 0, 1] head=2 count=3 dropped=2",
    "ring_pop": "peek=1 count=1",
    "ring_empty": "peek=-1 count=0",
    "backoff": "[999, 1999, 3999, 7999, 7999, 7999]",
    "backoff_min": "[0, 0, 0]",
}


def parse(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.strip().splitlines())


@pytest.fixture(scope="module")
def cpython_out() -> dict[str, str]:
    env_path = f"{HERE / 'shim'}:{FIRMWARE}:{ROOT}"
    proc = subprocess.run(
        [sys.executable, str(HERE / "golden.py")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path},
        check=True,
    )
    return parse(proc.stdout)


@pytest.fixture(scope="module")
def upy_out() -> dict[str, str]:
    return parse(run_upy(HERE / "golden.py", path=[FIRMWARE]).check().stdout)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_on_both_interpreters(
    name: str, cpython_out: dict[str, str], upy_out: dict[str, str]
) -> None:
    assert cpython_out[name] == GOLDEN[name]
    assert upy_out[name] == GOLDEN[name]


def test_rng_identical_on_both(cpython_out: dict[str, str], upy_out: dict[str, str]) -> None:
    assert cpython_out["rng"] == upy_out["rng"]


@pytest.fixture
def fw() -> Iterator[Any]:
    sys.path[:0] = [str(HERE / "shim"), str(FIRMWARE)]
    import startup

    yield startup
    del sys.path[:2]
    for m in ("startup", "micropython"):
        sys.modules.pop(m, None)


@pytest.mark.parametrize(
    ("history", "safe"),
    [
        # (crashes so far, window start, how the last run ended, now) -> safe mode?
        ((0, 0, 2, 1000), False),  # clean previous run
        ((2, 900, 0, 1000), False),  # third crash within the window: still allowed
        ((3, 900, 0, 1000), True),  # fourth crash within 300 s: safe mode
        ((3, 500, 0, 1000), False),  # window expired: counting restarts
        ((9, 990, 1, 1000), False),  # a reboot command is not a crash
    ],
)
def test_crash_loop_rule(fw: Any, history: tuple[int, int, int, int], safe: bool) -> None:
    crashes, start, ended, now = history
    assert fw.decide(crashes, start, ended, now, 3, 300)[2] is safe


def test_config_defaults_and_errors(fw: Any) -> None:
    raw = {
        "device": "ap-1",
        "site": "porto",
        "zone": "ribeira",
        "kind": "ap",
        "key": "00" * 32,
        "broker": {"host": "h", "port": 1883},
    }
    cfg = fw.validate(dict(raw))
    assert cfg["interval"] == 60 and cfg["broker"]["username"] == "ap-1"
    assert cfg["crash"] == {"max": 3, "window": 300, "stable": 60}
    assert cfg["broker"]["wait_ms"] == 10000  # the link's CONNACK / stalled-write limit
    with pytest.raises(fw.ConfigError, match=r"'broker\.wait_ms' must be an int"):
        fw.validate({**raw, "broker": {"host": "h", "port": 1, "wait_ms": "10s"}})
    with pytest.raises(fw.ConfigError, match=r"'broker\.host' is missing"):
        fw.validate({**raw, "broker": {"port": 1}})
    with pytest.raises(fw.ConfigError, match=r"'batch' must be 1\.\.4"):
        fw.validate({**raw, "batch": 9})
    cfg2 = fw.validate(dict(raw))
    fw.apply(cfg2, {0: 5, 1: {"16": 3}})
    assert cfg2["interval"] == 5 and cfg2["deadbands"] == {16: 3}
    assert fw.config_hash(cfg2) != fw.config_hash(cfg) and len(fw.config_hash(cfg)) == 8
    with pytest.raises(fw.ConfigError):
        fw.apply(cfg2, {0: 0})
    assert cfg2["interval"] == 5  # unchanged on error
