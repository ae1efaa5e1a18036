"""A private Mosquitto per test: the test writes the config (so auth, ACLs, TLS and plugins can
be added), the broker listens on a free loopback port, and is stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools import binaries


def __getattr__(name: str) -> str:
    """MOSQUITTO, the broker binary, found when first asked for (tools.binaries), so importing
    this module never fails on a machine still being set up."""
    if name == "MOSQUITTO":
        return binaries.mosquitto()
    raise AttributeError(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def terminate(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
    """Stop a Mosquitto cleanly (SIGTERM: persistence is written), then connect to one of its
    loopback ports to wake it: with clients connected, Mosquitto 2.0 otherwise notices the signal
    only when its 100 ms network wait ends (measured: ~0.11 s per stop, 1 ms with the wake-up).
    SIGKILL if it has not exited after 10 s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            continue
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Broker:
    """One Mosquitto process. `extra` holds config lines appended after the listener."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    anonymous: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"listener {self.port} 127.0.0.1",
            *self.extra,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")
        return self.conf_path

    def start(self) -> Broker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [binaries.mosquitto(), "-c", str(self.conf_path)],
            stdout=log,
            stderr=log,
            cwd=self.workdir,
        )
        log.close()
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"mosquitto did not start: {self.log_path.read_text()[-2000:]}"
            ) from None
        return self

    def listening_ports(self) -> list[int]:
        return [self.port]

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, self.listening_ports())
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
