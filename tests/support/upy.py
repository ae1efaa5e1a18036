"""Run scripts under the real MicroPython unix-port binary with a chosen heap size."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools import binaries

ROOT = Path(__file__).resolve().parents[2]


micropython_binary = binaries.micropython


@dataclass
class UpyResult:
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> UpyResult:
        if self.returncode != 0:
            raise AssertionError(
                f"micropython exited {self.returncode}\n--- stdout\n{self.stdout[-4000:]}"
                f"\n--- stderr\n{self.stderr[-4000:]}"
            )
        return self


def upy_env(path: list[Path] | None = None) -> dict[str, str]:
    """MICROPYPATH with the repository root first so `import protocol` finds ours."""
    env = dict(os.environ)
    dirs = [str(p) for p in (path or [])] + [str(ROOT), ".frozen", "~/.micropython/lib"]
    env["MICROPYPATH"] = ":".join(dirs)
    return env


def run_upy(
    script: str | Path,
    *args: str,
    heap: str = "64K",
    timeout: float = 120,
    path: list[Path] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> UpyResult:
    """Run a script file (a Path) or source text (a str) and return its exit code and output."""
    cmd = [micropython_binary(), "-X", f"heapsize={heap}"]
    if isinstance(script, Path):
        cmd.append(str(script))
    else:
        cmd += ["-c", script]
    proc = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=upy_env(path),
        input=stdin,
        cwd=cwd,
    )
    return UpyResult(proc.returncode, proc.stdout, proc.stderr)
