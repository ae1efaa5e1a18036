"""CPython-side helper: compile protocol/ with mpy-cross into a folder, as shipped to a device
(bytecode needs far less heap to import than source, which a 64 KiB heap must compile)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.upy import ROOT
from tools import binaries


def compile_protocol(dest: Path) -> Path:
    """Write dest/protocol/*.mpy and return dest (to put on MICROPYPATH)."""
    out = dest / "protocol"
    out.mkdir(parents=True, exist_ok=True)
    mpy_cross = binaries.mpy_cross()
    for src in sorted((ROOT / "protocol").glob("*.py")):
        subprocess.run(
            [str(mpy_cross), "-o", str(out / (src.stem + ".mpy")), str(src)],
            check=True,
            timeout=60,
        )
    return dest
