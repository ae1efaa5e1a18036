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


def short(p: Path) -> Path:
    """p inside the checkout, by the short link (tools.binaries.device_root); p elsewhere as is."""
    from tools.binaries import device_root

    return device_root() / p.relative_to(ROOT) if p.is_relative_to(ROOT) else p


def upy_env(path: list[Path] | None = None) -> dict[str, str]:
    """MICROPYPATH with the repository root first so `import protocol` finds ours."""
    from tools.binaries import device_root

    env = dict(os.environ)
    # the checkout by a short link: module file names live in a 64 KiB heap (tools/binaries.py)
    root = device_root()
    dirs = [str(short(p)) for p in (path or [])] + [str(root), ".frozen", "~/.micropython/lib"]
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
    prefix: list[str] | None = None,
) -> UpyResult:
    """Run a script file (a Path) or source text (a str) and return its exit code and output;
    prefix: a command the interpreter runs under (e.g. `debian_hosts`)."""
    cmd = [*(prefix or []), micropython_binary(), "-X", f"heapsize={heap}"]
    if isinstance(script, Path):
        cmd.append(str(short(script)))
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


# Debian 12's /etc/hosts as installed: glibc's getaddrinfo answers "localhost" with ::1 first.
DEBIAN_HOSTS = (
    "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n"
    "# The following lines are desirable for IPv6 capable hosts\n"
    "::1     localhost ip6-localhost ip6-loopback\n"
    "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
)


def debian_hosts(tmp: Path) -> list[str]:
    """A command prefix that runs the rest of the command with Debian's default /etc/hosts, in a
    private mount namespace (an unprivileged user namespace, the network untouched): the real
    resolver of the real interpreter then gives "localhost" as ::1 first, as on a fresh Debian
    machine. Checks that it does, so a test using it cannot pass for the wrong reason; skips
    where user namespaces are not allowed."""
    import pytest

    hosts = tmp / "hosts.debian"
    hosts.write_text(DEBIAN_HOSTS)
    prefix = ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    probe = "import socket;print([a[0] for a in socket.getaddrinfo('localhost',1,0,1)])"
    try:
        r = subprocess.run(
            [*prefix, micropython_binary(), "-c", probe], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed")
    if r.returncode != 0:
        pytest.skip(f"no private mount namespace here: {r.stderr.strip()[-200:]}")
    assert r.stdout.strip() == "[10, 2]", f"localhost is not ::1 then 127.0.0.1: {r.stdout}"
    return prefix
