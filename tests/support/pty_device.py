"""The real MicroPython unix port posing as a USB-serial board, for mpremote.

Recipe (/work/shared/PLATFORM-NOTES.md): micropython runs its REPL on the slave of one pty pair,
the test hands out the slave path of a second pair as the "port", and a relay thread copies bytes
between the two masters. Both slaves are in raw mode (otherwise the line discipline turns \\r\\n
into \\r\\r\\n and mpremote never sees its prompt). The device's filesystem is micropython's cwd.
`silent=True` gives a port where nothing answers: a serial device that is not a MicroPython board.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import threading
import tty
from pathlib import Path

from tests.support.upy import micropython_binary


class PtyDevice:
    def __init__(self, fs_dir: Path, heap: str = "512K", silent: bool = False) -> None:
        self.fs_dir = fs_dir
        self.heap = heap
        self.silent = silent
        self.proc: subprocess.Popen[bytes] | None = None
        self._fds: list[int] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.port = ""

    def start(self) -> PtyDevice:
        self.fs_dir.mkdir(parents=True, exist_ok=True)
        m_dev, s_dev = pty.openpty()
        m_host, s_host = pty.openpty()
        tty.setraw(s_dev)
        tty.setraw(s_host)
        self._fds += [m_dev, s_dev, m_host, s_host]
        self.port = os.ttyname(s_host)
        if not self.silent:
            env = dict(os.environ)
            env.pop("MICROPYPATH", None)  # the device sees only its own filesystem (cwd)
            self.proc = subprocess.Popen(
                [micropython_binary(), "-X", f"heapsize={self.heap}"],
                stdin=s_dev,
                stdout=s_dev,
                stderr=s_dev,
                cwd=self.fs_dir,
                env=env,
                start_new_session=True,
            )
        self._thread = threading.Thread(target=self._relay, args=(m_dev, m_host), daemon=True)
        self._thread.start()
        return self

    def _relay(self, m_dev: int, m_host: int) -> None:
        peer = {m_dev: m_host, m_host: m_dev}
        while True:
            ready, _, _ = select.select([m_dev, m_host, self._stop_r], [], [], 1.0)
            if self._stop_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the other side is closed right now; mpremote reopens later
                    continue
                if data and not (self.silent and fd == m_host):
                    os.write(peer[fd], data)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for fd in [*self._fds, self._stop_r, self._stop_w]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def __enter__(self) -> PtyDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
